//! Unit names: the one escaping rule shared by the generator, `gatewayctl` and the tests.
//!
//! `gateway@<group>-<instance>.service`, where group and instance are escaped like
//! `systemd-escape` does, except that `/` is escaped too (`\x2f`) instead of becoming `-`.
//! Every `-` inside a name is therefore `\x2d`, and the first unescaped `-` of the instance
//! string splits group from instance, whatever the names contain.

use std::fmt::Write as _;

/// The unit template every instance is an instance of.
pub const INSTANCE_TEMPLATE: &str = "gateway@.service";
/// The Node Manager's unit.
pub const NODE_MANAGER_UNIT: &str = "gateway-nodemanager.service";
/// The target that groups all local instances (and the Node Manager).
pub const GATEWAY_TARGET: &str = "gateway.target";

/// Longest unit name systemd accepts (UNIT_NAME_MAX minus the NUL).
pub const UNIT_NAME_MAX: usize = 255;

/// The runtime directory of an instance, relative to /run (`RuntimeDirectory=`), from its
/// group and instance ids: `gateway/group-2/instance-1`. Not from the escaped unit name, whose
/// backslashes systemd 260 refuses in `RuntimeDirectory=` (systemd/systemd#41853). Bytes
/// outside `[A-Za-z0-9._-]` become `+HH`, so the name stays unique, needs no quoting and holds
/// no specifier.
pub fn runtime_dir(group_id: &str, instance_id: &str) -> String {
    fn encode(out: &mut String, id: &str) {
        for b in id.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                out.push(b as char);
            } else {
                let _ = write!(out, "+{b:02x}");
            }
        }
    }
    let mut out = String::from("gateway/");
    encode(&mut out, group_id);
    out.push('/');
    encode(&mut out, instance_id);
    out
}

/// Why a group or instance name cannot become a unit name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("the name is empty")]
    Empty,
    /// The name holds a control character (newline, tab, ...), which no unit file can carry.
    #[error("the name contains a control character")]
    ControlCharacter,
    /// The escaped unit name would leave no room for its drop-in directory.
    #[error("the unit name would be {0} characters long; its drop-in directory <unit>.d must fit in 255, so at most 253")]
    TooLong(usize),
    /// The string is not a well-formed escaped instance string.
    #[error("{0:?} is not an escaped group-instance string (expected <group>-<instance>)")]
    Malformed(String),
}

/// Escape one group or instance name for use inside a unit name.
pub fn escape_name(name: &str) -> Result<String, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for (i, byte) in name.bytes().enumerate() {
        let plain =
            byte.is_ascii_alphanumeric() || byte == b':' || byte == b'_' || (byte == b'.' && i > 0);
        if plain {
            out.push(byte as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    Ok(out)
}

/// Reverse [`escape_name`] (and `systemd-escape`): `\xNN` becomes the byte NN.
pub fn unescape_name(escaped: &str) -> Result<String, NameError> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let hex = escaped
                .get(i + 2..i + 4)
                .filter(|_| bytes.get(i + 1) == Some(&b'x'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| NameError::Malformed(escaped.to_string()))?;
            out.push(hex);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| NameError::Malformed(escaped.to_string()))
}

/// The instance string of a group/instance pair: `<escaped group>-<escaped instance>`.
pub fn instance_string(group: &str, instance: &str) -> Result<String, NameError> {
    let s = format!("{}-{}", escape_name(group)?, escape_name(instance)?);
    let unit_len = "gateway@".len() + s.len() + ".service".len();
    // Its drop-in directory `<unit>.d` is a file name too, and no file name is longer than 255.
    if unit_len + ".d".len() > UNIT_NAME_MAX {
        return Err(NameError::TooLong(unit_len));
    }
    Ok(s)
}

/// The unit name of a group/instance pair, e.g. `gateway@group1-server1.service`.
pub fn instance_unit(group: &str, instance: &str) -> Result<String, NameError> {
    Ok(unit_of_instance_string(&instance_string(group, instance)?))
}

/// The unit of an instance string: `group1-server1` -> `gateway@group1-server1.service`.
pub fn unit_of_instance_string(instance_string: &str) -> String {
    format!("gateway@{instance_string}.service")
}

/// Split an instance string (what `%i` expands to) back into (group, instance) names.
pub fn parse_instance_string(s: &str) -> Result<(String, String), NameError> {
    let malformed = || NameError::Malformed(s.to_string());
    let mut parts = s.split('-');
    let (Some(group), Some(instance), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let group = unescape_name(group)?;
    let instance = unescape_name(instance)?;
    if group.is_empty() || instance.is_empty() {
        return Err(malformed());
    }
    Ok((group, instance))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_readable() {
        assert_eq!(
            instance_unit("group1", "server1").unwrap(),
            "gateway@group1-server1.service"
        );
    }

    #[test]
    fn dashes_spaces_and_unicode_are_escaped() {
        assert_eq!(
            instance_string("my-group", "server1").unwrap(),
            r"my\x2dgroup-server1"
        );
        assert_eq!(
            instance_string("payments-eu", "edge node 1").unwrap(),
            r"payments\x2deu-edge\x20node\x201"
        );
        assert_eq!(escape_name("zürich").unwrap(), r"z\xc3\xbcrich");
        assert_eq!(escape_name(".hidden").unwrap(), r"\x2ehidden");
        assert_eq!(escape_name("a/b").unwrap(), r"a\x2fb");
    }

    #[test]
    fn escaping_round_trips() {
        for (g, i) in [
            ("payments-eu", "edge node 1"),
            ("zürich", "a.b"),
            ("x\\y", "-"),
            ("/", "%i"),
        ] {
            let s = instance_string(g, i).unwrap();
            assert_eq!(
                parse_instance_string(&s).unwrap(),
                (g.to_string(), i.to_string())
            );
        }
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(escape_name(""), Err(NameError::Empty));
        assert_eq!(escape_name("a\nb"), Err(NameError::ControlCharacter));
        assert!(matches!(
            instance_string(&"x".repeat(200), &"y".repeat(60)),
            Err(NameError::TooLong(_))
        ));
        assert!(parse_instance_string("a-b-c").is_err());
        assert!(parse_instance_string("nodash").is_err());
        assert!(parse_instance_string(r"a-\x4").is_err());
    }
}
