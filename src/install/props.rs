//! `envSettings.props`: the vendor's per-instance Java properties, read for the instance's ports.

/// The ports an instance's `conf/envSettings.props` declares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    /// `env.PORT.TRAFFIC`: where the gateway serves API traffic (and its health check).
    pub traffic: Option<u16>,
    /// `env.PORT.MANAGEMENT`: the instance's management (Node Manager facing) port.
    pub management: Option<u16>,
}

/// Read the ports out of a properties text; unknown keys and unparsable values are ignored
/// (the file belongs to the vendor, and its other keys are not ours to judge).
pub fn parse_ports(text: &str) -> Ports {
    let mut ports = Ports::default();
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some(split) = line.find(['=', ':']) else {
            continue;
        };
        let (key, value) = (line[..split].trim(), line[split + 1..].trim());
        let slot = match key {
            "env.PORT.TRAFFIC" => &mut ports.traffic,
            "env.PORT.MANAGEMENT" => &mut ports.management,
            _ => continue,
        };
        if let Ok(port) = value.parse::<u16>() {
            if port != 0 {
                *slot = Some(port);
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ports_and_ignores_the_rest() {
        let p = parse_ports("# c\nenv.PORT.TRAFFIC = 8080\nenv.PORT.MANAGEMENT:8085\nother=x\n");
        assert_eq!(
            p,
            Ports {
                traffic: Some(8080),
                management: Some(8085)
            }
        );
        assert_eq!(
            parse_ports("env.PORT.TRAFFIC=http\n!env.PORT.MANAGEMENT=1"),
            Ports::default()
        );
    }
}
