//! The operator's own autostart choices, made with `gatewayctl enable` / `gatewayctl disable`:
//! a file of ours, read after gateway.toml and every drop-in, so that the choice wins whatever
//! else made an instance autostart, and survives daemon-reload and reboot.

use super::{write_atomic, Root};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The file `gatewayctl enable/disable` writes; read last of all config files.
pub const AUTOSTART_FILE: &str = "/etc/gateway-systemd/autostart.toml";

#[derive(Deserialize)]
struct Choice {
    autostart: bool,
}

#[derive(Deserialize)]
struct ChoicesFile {
    #[serde(default)]
    instances: BTreeMap<String, Choice>,
}

/// The choices recorded so far, by `group/instance`; Err names the file and what is wrong.
pub fn read(root: &Root) -> Result<BTreeMap<String, bool>, String> {
    let path = Path::new(AUTOSTART_FILE);
    let Some(text) = root.read(path).map_err(|e| e.to_string())? else {
        return Ok(BTreeMap::new());
    };
    let file: ChoicesFile = toml::from_str(&text).map_err(|e| {
        format!(
            "{AUTOSTART_FILE}: {}; fix or remove the file (it only records `gatewayctl enable/disable`)",
            e.message().trim()
        )
    })?;
    Ok(file
        .instances
        .into_iter()
        .map(|(k, c)| (k, c.autostart))
        .collect())
}

/// The file's text for a set of choices.
pub fn render(choices: &BTreeMap<String, bool>) -> String {
    let mut out = String::from(
        "# Written by `gatewayctl enable` and `gatewayctl disable`. Read after gateway.toml and every\n\
         # gateway.toml.d/ drop-in, so these choices win. Remove a table and run\n\
         # `systemctl daemon-reload` to go back to what the config says.\n",
    );
    for (key, on) in choices {
        let _ = write!(
            out,
            "\n[instances.{}]\nautostart = {on}\n",
            super::config::toml_string(key)
        );
    }
    out
}

/// Record choices (merged into the existing ones), atomically.
pub fn record(root: &Root, changes: &[(String, bool)]) -> Result<(), String> {
    let mut choices = read(root)?;
    for (key, on) in changes {
        choices.insert(key.clone(), *on);
    }
    let path = root.real(Path::new(AUTOSTART_FILE));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    write_atomic(&path, render(&choices).as_bytes(), 0o644)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_choices_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        record(
            &root,
            &[
                ("group1/server1".into(), false),
                ("payments-eu/edge \"node\" 1".into(), true),
            ],
        )
        .unwrap();
        record(&root, &[("group1/server1".into(), true)]).unwrap();
        let back = read(&root).unwrap();
        assert_eq!(back.len(), 2);
        assert!(back["group1/server1"]);
        assert!(back["payments-eu/edge \"node\" 1"]);
    }
}
