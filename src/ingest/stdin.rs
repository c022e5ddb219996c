//! One message on standard input: `rebound ingest -`, the Postfix pipe(8) transport.

use std::io::Read;

/// Why the message on stdin was not taken.
#[derive(Debug, thiserror::Error)]
pub enum StdinError {
    /// Reading failed.
    #[error("cannot read the message on stdin: {0}")]
    Io(#[from] std::io::Error),
    /// The message is over the limit (it was read to the end and discarded).
    #[error("message on stdin of {size} bytes is over the limit of {limit} bytes (ingest.lmtp.max_message_size)")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: usize,
    },
}

/// Read the whole input as one message of at most `limit` bytes. A larger one is read to its end (so the
/// writer of the pipe does not see a broken pipe) and refused. Blocking: call it off the async runtime.
pub fn read_message<R: Read>(mut input: R, limit: usize) -> Result<Vec<u8>, StdinError> {
    let mut bytes = Vec::new();
    (&mut input).take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() <= limit {
        return Ok(bytes);
    }
    let rest = std::io::copy(&mut input, &mut std::io::sink())?;
    Err(StdinError::TooLarge { size: bytes.len() as u64 + rest, limit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_up_to_the_limit() {
        let msg = read_message(&b"Subject: x\n\nhi\n"[..], 15).unwrap();
        assert_eq!(msg, b"Subject: x\n\nhi\n");
        assert_eq!(read_message(&b""[..], 15).unwrap(), b"");
    }

    #[test]
    fn over_the_limit_is_refused_with_its_size() {
        let input = vec![b'a'; 5000];
        let e = read_message(&input[..], 1024).unwrap_err();
        assert!(matches!(e, StdinError::TooLarge { size: 5000, limit: 1024 }), "{e}");
    }
}
