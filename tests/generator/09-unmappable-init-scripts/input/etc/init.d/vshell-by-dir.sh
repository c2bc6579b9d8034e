#!/bin/sh
/opt/apigateway/posix/bin/startinstance /opt/apigateway/groups/group-3/instance-3/ -d
