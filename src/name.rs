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

/// Longest Unix-socket path (`sun_path` is 108 bytes with its terminating NUL), and longest
/// abstract socket name.
pub const MAX_SOCKET_PATH: usize = 107;
/// Longest FIFO or log directory path (`PATH_MAX` is 4096 with the terminating NUL).
pub const MAX_PATH: usize = 4095;

/// Checks a path or abstract name that a transport names its objects by: not empty, no NUL
/// byte, not longer than the kernel takes.
#[cfg(not(shmbus_loom))]
fn check_path(bytes: &[u8], what: &'static str, max: usize) -> Result<(), OpenError> {
    let bad = |reason: String| OpenError::InvalidName {
        name: String::from_utf8_lossy(bytes).into_owned(),
        reason: format!("{what} {reason}"),
    };
    if bytes.is_empty() {
        return Err(bad("is empty".into()));
    }
    if bytes.contains(&0) {
        return Err(bad("contains a NUL byte".into()));
    }
    if bytes.len() > max {
        return Err(bad(format!("is longer than {max} bytes")));
    }
    Ok(())
}

/// Checks the paths and names inside a transport and its options (the channel name itself
/// goes through [`object_name`] for every transport): FIFO, socket and log paths, abstract
/// socket names, log cursor names.
#[cfg(not(shmbus_loom))]
pub(crate) fn check_transport(
    t: &crate::Transport,
    options: &crate::Options,
) -> Result<(), OpenError> {
    use crate::Transport;
    use std::os::unix::ffi::OsStrExt;
    if let (Transport::File { .. }, Some(cursor)) = (t, &options.log.cursor) {
        validate(cursor, "cursor name", false)?;
    }
    match t {
        Transport::Fifo { path } => check_path(path.as_os_str().as_bytes(), "FIFO path", MAX_PATH),
        Transport::File { dir } => {
            check_path(dir.as_os_str().as_bytes(), "log directory", MAX_PATH)
        }
        Transport::UnixSocket { path } => {
            check_path(path.as_os_str().as_bytes(), "socket path", MAX_SOCKET_PATH)
        }
        Transport::AbstractSocket { name } => {
            check_path(name.as_bytes(), "abstract socket name", MAX_SOCKET_PATH)
        }
        _ => Ok(()),
    }
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
