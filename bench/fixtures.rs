//! Hosts with many instances, shared by the benchmarks.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

/// A host with `n` instances (10 per group), each with its managedomain init script and rc links.
pub fn write_fixture(root: &Path, n: usize) {
    let install = root.join("opt/apigateway");
    let mut groups = Vec::new();
    for g in 0..n.div_ceil(10) {
        let mut services = Vec::new();
        for i in (g * 10)..((g + 1) * 10).min(n) {
            services.push(serde_json::json!({
                "id": format!("instance-{i}"), "name": format!("server {i}"), "type": "gateway",
                "hostID": "host-1", "managementPort": 8085, "scheme": "https", "enabled": true
            }));
            let dir = install.join(format!("groups/group-{g}/instance-{i}/conf"));
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join("envSettings.props"),
                format!("env.PORT.TRAFFIC={}\nenv.PORT.MANAGEMENT=8085\n", 10000 + i),
            )
            .unwrap();
            let script_name = format!("vshell-group-{g}-server-{i}");
            let script = format!(
                "#!/bin/sh\n### BEGIN INIT INFO\n# Provides:          {script_name}\n# Required-Start:    $network $remote_fs\n\
                 # Required-Stop:     $network $remote_fs\n# Default-Start:     2 3 4 5\n# Default-Stop:      0 1 6\n\
                 # Short-Description: Axway API Gateway instance server {i} in group-{g}\n### END INIT INFO\n\n\
                 VDISTDIR=\"/opt/apigateway\"\nVINSTDIR=\"/opt/apigateway/groups/group-{g}/instance-{i}\"\nexport VDISTDIR VINSTDIR\n\n\
                 case \"$1\" in\n  start)   \"$VDISTDIR/posix/bin/startinstance\" -d -h \"$VINSTDIR\" ;;\n\
                 \x20 stop)    \"$VDISTDIR/posix/bin/startinstance\" -k -h \"$VINSTDIR\" ;;\n\
                 \x20 *) echo \"Usage: $0 {{start|stop}}\"; exit 1 ;;\nesac\n"
            );
            let path = root.join("etc/init.d").join(&script_name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            for level in 2..=5 {
                let rc = root.join(format!("etc/rc{level}.d"));
                fs::create_dir_all(&rc).unwrap();
                symlink(
                    format!("../init.d/{script_name}"),
                    rc.join(format!("S20{script_name}")),
                )
                .unwrap();
            }
        }
        groups.push(serde_json::json!({"id": format!("group-{g}"), "name": format!("group {g}"), "services": services}));
    }
    let topology = serde_json::json!({"hosts": [{"id": "host-1", "name": "gw1.example.com"}], "groups": groups});
    fs::create_dir_all(install.join("groups")).unwrap();
    fs::write(install.join("groups/topology.json"), topology.to_string()).unwrap();
    fs::create_dir_all(root.join("etc/gateway-systemd")).unwrap();
    fs::write(
        root.join("etc/gateway-systemd/gateway.toml"),
        "host = \"gw1.example.com\"\n",
    )
    .unwrap();
}
