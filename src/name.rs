//! Channel name validation.

use crate::error::OpenError;

/// Longest channel name (prefix included), in bytes; `NAME_MAX` is 255.
pub const MAX_NAME_LEN: usize = 200;

/// Checks a channel name (or prefix): 1..=200 bytes of ASCII letters, digits, `.`, `_`, `-`;
/// not starting with `.`; no `..`.
pub(crate) fn validate(name: &str, what: &'static str, allow_empty: bool) -> Result<(), OpenError> {
    let bad = |reason: &str| OpenError::InvalidName {
        name: name.to_owned(),
        reason: format!("{what} {reason}"),
    };
    if name.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(bad("is empty"))
        };
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(&format!("is longer than {MAX_NAME_LEN} bytes")));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(bad(&format!(
            "contains {c:?}: only ASCII letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    if name.starts_with('.') {
        return Err(bad("starts with '.'"));
    }
    if name.contains("..") {
        return Err(bad("contains '..'"));
    }
    Ok(())
}

/// The shared-memory object name for channel `name` with `prefix`.
pub(crate) fn object_name(prefix: &str, name: &str) -> Result<String, OpenError> {
    validate(prefix, "prefix", true)?;
    validate(name, "channel name", false)?;
    let full = format!("{prefix}{name}");
    validate(&full, "prefixed name", false)?;
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(object_name("shmbus.", "ticks").is_ok());
        assert!(object_name("shmbus.", "a-b_c.9").is_ok());
        for bad in [
            "",
            "a/b",
            "..",
            "a..b",
            ".hidden",
            "sp ace",
            "ü",
            &"x".repeat(300),
        ] {
            assert!(
                matches!(
                    object_name("shmbus.", bad),
                    Err(OpenError::InvalidName { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert!(object_name("bad/", "x").is_err());
    }
}
