//! `gatewayctl restore` (next).
