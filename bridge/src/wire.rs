//! What a bridged message looks like on Zenoh: its key and its attachment.
//!
//! * **Key**: channel `ticks` is published on `<key prefix>/ticks`, by default
//!   `shmbus/ticks` (a route can name another key).
//! * **Payload**: the message's encoded bytes exactly as they lie in the channel: the
//!   value's own bytes for a zero-copy (`#[repr(C)]`) type, in the sending machine's byte
//!   order (little-endian on x86-64 and aarch64); postcard for a serialized type.
//! * **Attachment**: 24 bytes, little-endian, then optionally the type name:
//!
//! | offset | size | field                                                           |
//! |--------|------|-----------------------------------------------------------------|
//! | 0      | 4    | magic `SHMB`                                                    |
//! | 4      | 1    | version, 1                                                      |
//! | 5      | 1    | encoding: 1 zero-copy, 2 postcard                               |
//! | 6      | 2    | reserved, 0                                                     |
//! | 8      | 8    | the type fingerprint (`MessageInfo::fingerprint`)                |
//! | 16     | 8    | origin: the id of the bridge that published it; 0 for others    |
//! | 24     | rest | the type name, UTF-8 (informational, may be empty)              |
//!
//! A receiving bridge delivers a sample only if its attachment parses and its fingerprint
//! is the local channel's; anything else is counted as rejected and logged.

/// Magic bytes at the start of an attachment.
pub const MAGIC: [u8; 4] = *b"SHMB";
/// Attachment version this build writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed part of an attachment.
pub const HEADER_LEN: usize = 24;

/// The decoded attachment of a bridged message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// 1 zero-copy, 2 postcard (as `shmbus::Encoding`).
    pub encoding: u8,
    /// The type fingerprint.
    pub fingerprint: u64,
    /// The publishing bridge's id, 0 if not published by a bridge.
    pub origin: u64,
    /// The type name (may be empty).
    pub type_name: String,
}

/// Why an attachment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The sample carried no attachment.
    #[error("the sample has no attachment (a shmbus bridge needs the type fingerprint)")]
    Missing,
    /// Shorter than the fixed part.
    #[error("the attachment has {0} bytes, fewer than the {HEADER_LEN} of its fixed part")]
    Short(usize),
    /// Wrong magic.
    #[error("the attachment does not start with \"SHMB\"")]
    Magic,
    /// A version this build does not know.
    #[error("attachment version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
}

impl Attachment {
    /// The attachment's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.type_name.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.encoding);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.fingerprint.to_le_bytes());
        out.extend_from_slice(&self.origin.to_le_bytes());
        out.extend_from_slice(self.type_name.as_bytes());
        out
    }

    /// Parses an attachment (bytes from the network: errors, never panics).
    ///
    /// # Errors
    ///
    /// [`AttachmentError`].
    pub fn decode(bytes: &[u8]) -> Result<Attachment, AttachmentError> {
        if bytes.len() < HEADER_LEN {
            return Err(AttachmentError::Short(bytes.len()));
        }
        if bytes[0..4] != MAGIC {
            return Err(AttachmentError::Magic);
        }
        if bytes[4] != VERSION {
            return Err(AttachmentError::Version(bytes[4]));
        }
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Attachment {
            encoding: bytes[5],
            fingerprint: word(8),
            origin: word(16),
            type_name: String::from_utf8_lossy(&bytes[HEADER_LEN..]).into_owned(),
        })
    }
}

/// The default key of channel `channel`: `<key_prefix>/<channel>`.
pub fn key_of(key_prefix: &str, channel: &str) -> String {
    if key_prefix.is_empty() {
        channel.to_owned()
    } else {
        format!("{}/{channel}", key_prefix.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let a = Attachment {
            encoding: 1,
            fingerprint: 0x0123_4567_89ab_cdef,
            origin: 42,
            type_name: "Tick".into(),
        };
        let bytes = a.encode();
        assert_eq!(bytes.len(), HEADER_LEN + 4);
        assert_eq!(Attachment::decode(&bytes), Ok(a));
        for n in 0..HEADER_LEN {
            assert_eq!(
                Attachment::decode(&bytes[..n]),
                Err(AttachmentError::Short(n))
            );
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(Attachment::decode(&bad), Err(AttachmentError::Magic));
        let mut bad = bytes;
        bad[4] = 9;
        assert_eq!(Attachment::decode(&bad), Err(AttachmentError::Version(9)));
        assert_eq!(key_of("shmbus", "ticks"), "shmbus/ticks");
        assert_eq!(key_of("site/a/", "ticks"), "site/a/ticks");
        assert_eq!(key_of("", "ticks"), "ticks");
    }
}
