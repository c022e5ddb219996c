//! Messages from the file system: single files, directories (recursive), Maildir (`cur/` and `new/`,
//! never `tmp/`) and mbox files (split on `From ` lines, `>From ` unescaped).
//!
//! [`Messages`] walks the paths lazily and streams mbox files, so memory stays bounded by the size limit
//! of one message whatever the size of the input.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Longest piece of a line read at once; longer lines are read in pieces of this size.
const SEGMENT: usize = 64 * 1024;

/// One message read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The file, as reached from the path given.
    pub path: PathBuf,
    /// For messages of an mbox file, the 1-based position in it.
    pub index: Option<usize>,
    /// The mbox `From ` line's envelope sender, when there is one.
    pub envelope_from: Option<String>,
    /// The message, `From ` line removed and `>From ` lines unescaped for mbox.
    pub bytes: Vec<u8>,
}

impl RawMessage {
    /// The `messages.source` value: `file:PATH`, or `file:PATH#N` for the N-th message of an mbox file.
    pub fn source(&self) -> String {
        match self.index {
            Some(i) => format!("file:{}#{i}", self.path.display()),
            None => format!("file:{}", self.path.display()),
        }
    }
}

/// Why a file or message could not be read. The other files are read all the same.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A directory walk failed below a given path.
    #[error("cannot read {}: {source}", path.display())]
    Walk {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: walkdir::Error,
    },
    /// The message is larger than the limit; it was not read into memory.
    #[error("{}{}: message of {size} bytes is over the limit of {limit} bytes (ingest.lmtp.max_message_size)",
            path.display(), index.map(|i| format!(" message #{i}")).unwrap_or_default())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Position in an mbox file.
        index: Option<usize>,
        /// Its size (at least; reading stops counting at the end of the message).
        size: u64,
        /// The limit.
        limit: usize,
    },
}

/// A directory walk that never enters a Maildir's `tmp/`.
type Walk = walkdir::FilterEntry<walkdir::IntoIter, fn(&walkdir::DirEntry) -> bool>;

/// Iterator over every message below a list of paths, in order; directories are walked sorted by name.
pub struct Messages {
    roots: VecDeque<PathBuf>,
    walk: Option<(PathBuf, Walk)>,
    mbox: Option<MboxReader<BufReader<File>>>,
    limit: usize,
}

impl Messages {
    /// Messages below `paths`, each at most `limit` bytes.
    pub fn new(paths: &[PathBuf], limit: usize) -> Messages {
        Messages { roots: paths.iter().cloned().collect(), walk: None, mbox: None, limit }
    }

    /// The next file to read, walking directories.
    fn next_file(&mut self) -> Option<Result<PathBuf, ReadError>> {
        loop {
            if let Some((root, walk)) = &mut self.walk {
                match walk.next() {
                    Some(Ok(entry)) => {
                        if entry.file_type().is_file() && wanted_file(entry.path()) {
                            return Some(Ok(entry.into_path()));
                        }
                        continue;
                    }
                    Some(Err(source)) => return Some(Err(ReadError::Walk { path: root.clone(), source })),
                    None => self.walk = None,
                }
            }
            let root = self.roots.pop_front()?;
            match std::fs::metadata(&root) {
                Ok(meta) if meta.is_dir() => {
                    let walk = walkdir::WalkDir::new(&root)
                        .follow_links(true)
                        // By name: the entries sorted are siblings, whose paths share their parent's, so their
                        // whole paths compare as their names do (`sort_by_file_name` splits both paths at every
                        // comparison, 3 M instructions for a directory of 500 files).
                        .sort_by(|a, b| a.path().as_os_str().cmp(b.path().as_os_str()))
                        .into_iter()
                        .filter_entry(not_maildir_tmp as fn(&walkdir::DirEntry) -> bool);
                    self.walk = Some((root, walk));
                }
                Ok(_) => return Some(Ok(root)),
                Err(source) => return Some(Err(ReadError::Io { path: root, source })),
            }
        }
    }

    /// Open one file: an mbox file becomes a stream of messages, anything else one message.
    fn open(&mut self, path: PathBuf) -> Option<Result<RawMessage, ReadError>> {
        let io_err = |path: &Path, source| ReadError::Io { path: path.to_path_buf(), source };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => return Some(Err(io_err(&path, e))),
        };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::with_capacity(SEGMENT, file);
        let starts_like_mbox = match reader.fill_buf() {
            Ok(head) => head.starts_with(b"From "),
            Err(e) => return Some(Err(io_err(&path, e))),
        };
        if starts_like_mbox {
            match MboxReader::new(reader, path, self.limit) {
                Ok(mbox) => {
                    self.mbox = Some(mbox);
                    return None;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        if size > self.limit as u64 {
            return Some(Err(ReadError::TooLarge { path, index: None, size, limit: self.limit }));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        // Read one byte past the limit so a file that grew since the stat is still caught.
        if let Err(e) = reader.by_ref().take(self.limit as u64 + 1).read_to_end(&mut bytes) {
            return Some(Err(io_err(&path, e)));
        }
        if bytes.len() > self.limit {
            return Some(Err(ReadError::TooLarge { path, index: None, size: bytes.len() as u64, limit: self.limit }));
        }
        Some(Ok(RawMessage { path, index: None, envelope_from: None, bytes }))
    }
}

impl Iterator for Messages {
    type Item = Result<RawMessage, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(mbox) = &mut self.mbox {
                match mbox.next() {
                    Some(item) => return Some(item),
                    None => self.mbox = None,
                }
            }
            match self.next_file()? {
                Ok(path) => {
                    if let Some(item) = self.open(path) {
                        return Some(item);
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Whether `dir` is a Maildir: it has both `cur/` and `new/`.
fn is_maildir(dir: &Path) -> bool {
    dir.join("cur").is_dir() && dir.join("new").is_dir()
}

/// `tmp/` of a Maildir holds messages still being delivered: never read them.
fn not_maildir_tmp(entry: &walkdir::DirEntry) -> bool {
    let path = entry.path();
    !(entry.file_type().is_dir() && path.file_name() == Some("tmp".as_ref()) && path.parent().is_some_and(is_maildir))
}

/// Files worth reading: not hidden (`.DS_Store`, `.mbox.lock`), and not the files a mail server keeps at the
/// top of a Maildir (`dovecot-uidlist`, `maildirfolder`, `subscriptions`).
fn wanted_file(path: &Path) -> bool {
    let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    !hidden && !path.parent().is_some_and(is_maildir)
}

/// Streams the messages of an mbox file (mboxo and mboxrd).
///
/// A message starts after a line beginning with `From ` that opens the file or follows an empty line; the
/// empty line before it belongs to the mbox format, not to the message. Lines matching `^>+From ` lose one
/// `>` (mboxrd unescaping, which also undoes mboxo's escaping of body lines). Lines end with LF (CRLF
/// included), or with a bare CR when the file's first line does (old Mac files).
pub struct MboxReader<R> {
    reader: R,
    path: PathBuf,
    limit: usize,
    /// The byte that ends a line: LF, or CR in a file written with bare CR line ends.
    line_end: u8,
    /// Messages started so far.
    index: usize,
    /// Envelope sender from the `From ` line that starts the next message; `None` once the input ends.
    next_from: Option<Option<String>>,
}

impl<R: BufRead> MboxReader<R> {
    /// Start reading: consumes the first `From ` line.
    pub fn new(mut reader: R, path: PathBuf, limit: usize) -> Result<MboxReader<R>, ReadError> {
        let io_err = |source| ReadError::Io { path: path.clone(), source };
        let line_end = if bare_cr_line_ends(reader.fill_buf().map_err(io_err)?) { b'\r' } else { b'\n' };
        let mut first = Vec::new();
        read_segment(&mut reader, &mut first, SEGMENT, line_end).map_err(io_err)?;
        let next_from = if first.is_empty() { None } else { Some(envelope_sender(&first)) };
        Ok(MboxReader { reader, path, limit, line_end, index: 0, next_from })
    }

    fn read_message(&mut self, envelope_from: Option<String>) -> Result<RawMessage, ReadError> {
        self.index += 1;
        let mut bytes = Vec::new();
        let mut size: u64 = 0;
        let mut line = Vec::with_capacity(256);
        let mut at_line_start = true;
        let mut prev_blank = false;
        let mut last_line_start = 0;
        loop {
            line.clear();
            let n = read_segment(&mut self.reader, &mut line, SEGMENT, self.line_end)
                .map_err(|source| ReadError::Io { path: self.path.clone(), source })?;
            if n == 0 {
                break;
            }
            let complete = line.last() == Some(&self.line_end);
            if at_line_start && prev_blank && line.starts_with(b"From ") {
                self.next_from = Some(envelope_sender(&line));
                // Drain the rest of an overlong `From ` line.
                let mut rest_complete = complete;
                while !rest_complete {
                    line.clear();
                    let n = read_segment(&mut self.reader, &mut line, SEGMENT, self.line_end)
                        .map_err(|source| ReadError::Io { path: self.path.clone(), source })?;
                    rest_complete = n == 0 || line.last() == Some(&self.line_end);
                }
                break;
            }
            if at_line_start {
                last_line_start = bytes.len();
            }
            let content: &[u8] = if at_line_start && is_escaped_from(&line) { &line[1..] } else { &line };
            size += content.len() as u64;
            if size <= self.limit as u64 {
                bytes.extend_from_slice(content);
            } else if !bytes.is_empty() {
                bytes = Vec::new();
            }
            if complete {
                prev_blank = at_line_start && (line == [self.line_end] || line == b"\r\n");
            }
            at_line_start = complete;
        }
        if size > self.limit as u64 {
            return Err(ReadError::TooLarge { path: self.path.clone(), index: Some(self.index), size, limit: self.limit });
        }
        // The separating empty line before the next `From ` line (or the end of the file) is not content.
        if prev_blank && at_line_start {
            bytes.truncate(last_line_start);
        }
        Ok(RawMessage { path: self.path.clone(), index: Some(self.index), envelope_from, bytes })
    }
}

impl<R: BufRead> Iterator for MboxReader<R> {
    type Item = Result<RawMessage, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        // `read_message` sets `next_from` again only when it reaches the next `From ` line, so an I/O
        // error or the end of the input ends the iteration.
        let envelope_from = self.next_from.take()?;
        Some(self.read_message(envelope_from))
    }
}

/// `>From `, `>>From `, ... at the start of a line.
fn is_escaped_from(line: &[u8]) -> bool {
    let quotes = line.iter().take_while(|&&b| b == b'>').count();
    quotes > 0 && line[quotes..].starts_with(b"From ")
}

/// The sender of an mbox `From sender date` line; `None` for `MAILER-DAEMON` or an empty one.
fn envelope_sender(line: &[u8]) -> Option<String> {
    let rest = line.strip_prefix(b"From ")?;
    let token = rest.split(|b| b.is_ascii_whitespace()).find(|t| !t.is_empty())?;
    let sender = String::from_utf8_lossy(token).into_owned();
    if sender.eq_ignore_ascii_case("MAILER-DAEMON") || sender == "<>" { None } else { Some(sender) }
}

/// Whether the first line of `head` ends with a bare CR (a CR not followed by LF) rather than LF.
fn bare_cr_line_ends(head: &[u8]) -> bool {
    memchr::memchr2(b'\r', b'\n', head).is_some_and(|i| head[i] == b'\r' && head.get(i + 1).is_some_and(|&b| b != b'\n'))
}

/// Append bytes up to and including the next `line_end` byte, at most `cap` bytes; returns how many (0 at the
/// end).
fn read_segment<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>, cap: usize, line_end: u8) -> io::Result<usize> {
    let mut total = 0;
    loop {
        let available = match reader.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(total);
        }
        let (n, line_ended) = super::take_line(available, buf, cap - total, line_end);
        reader.consume(n);
        total += n;
        if line_ended || total >= cap {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbox(text: &[u8], limit: usize) -> Vec<Result<RawMessage, ReadError>> {
        MboxReader::new(text, PathBuf::from("box"), limit).unwrap().collect()
    }

    #[test]
    fn mbox_splits_on_from_lines_after_blank_lines() {
        let text = b"From a@x.example Mon Jan  1 00:00:00 2024\nSubject: one\n\nbody 1\nFrom here on it is text\n\nFrom MAILER-DAEMON Tue Jan  2 00:00:00 2024\nSubject: two\n\nbody 2\n\n";
        let msgs: Vec<_> = mbox(text, 1000).into_iter().map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].bytes, b"Subject: one\n\nbody 1\nFrom here on it is text\n");
        assert_eq!(msgs[0].envelope_from.as_deref(), Some("a@x.example"));
        assert_eq!(msgs[0].index, Some(1));
        assert_eq!(msgs[1].bytes, b"Subject: two\n\nbody 2\n");
        assert_eq!(msgs[1].envelope_from, None);
        assert_eq!(msgs[1].source(), "file:box#2");
    }

    #[test]
    fn mbox_unescapes_one_quote_of_from_lines() {
        let text = b"From x Mon Jan  1 00:00:00 2024\r\nSubject: q\r\n\r\n>From the start\r\n>>From deeper\r\n> From not escaped\r\n\r\n";
        let msgs: Vec<_> = mbox(text, 1000).into_iter().map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].bytes, b"Subject: q\r\n\r\nFrom the start\r\n>From deeper\r\n> From not escaped\r\n");
    }

    #[test]
    fn mbox_message_over_the_limit_is_an_error_and_the_next_one_is_read() {
        let mut text = b"From x Mon Jan  1 00:00:00 2024\nSubject: big\n\n".to_vec();
        text.extend(std::iter::repeat_n(b'a', 5000));
        text.extend_from_slice(b"\n\nFrom y Mon Jan  1 00:00:00 2024\nSubject: small\n\nok\n");
        let msgs = mbox(&text, 1000);
        assert_eq!(msgs.len(), 2);
        assert!(matches!(msgs[0], Err(ReadError::TooLarge { index: Some(1), size, .. }) if size > 5000));
        assert_eq!(msgs[1].as_ref().unwrap().bytes, b"Subject: small\n\nok\n");
    }

    #[test]
    fn mbox_with_an_overlong_line_is_read_in_pieces() {
        let mut text = b"From x Mon Jan  1 00:00:00 2024\n".to_vec();
        let long = vec![b'z'; SEGMENT * 3 + 7];
        text.extend_from_slice(&long);
        text.extend_from_slice(b"\nFrom not a separator\n");
        let msgs: Vec<_> = mbox(&text, 10 * SEGMENT).into_iter().map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].bytes.len(), long.len() + 1 + "From not a separator\n".len());
    }

    #[test]
    fn mbox_with_bare_cr_line_ends_is_split_on_its_from_lines() {
        let text = b"From a@x.example Mon Jan  1 00:00:00 2024\rSubject: one\r\rbody\r\rFrom b y\rSubject: two\r\rok\r";
        let msgs: Vec<_> = mbox(text, 1000).into_iter().map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].envelope_from.as_deref(), Some("a@x.example"));
        assert_eq!(msgs[0].bytes, b"Subject: one\r\rbody\r");
        assert_eq!(msgs[1].bytes, b"Subject: two\r\rok\r");
        assert!(!bare_cr_line_ends(b"From a\r\nSubject: x\r"), "CRLF files end lines with LF");
    }

    #[test]
    fn empty_mbox_message_is_kept() {
        let msgs: Vec<_> = mbox(b"From a x\n\nFrom b y\nS: 1\n", 100).into_iter().map(Result::unwrap).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].bytes, b"");
        assert_eq!(msgs[1].bytes, b"S: 1\n");
    }

    #[test]
    fn walks_directories_and_maildirs_skipping_tmp_and_hidden_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let md = root.join("Maildir");
        for sub in ["cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        std::fs::write(md.join("cur/1.host:2,S"), "Subject: cur\n\n").unwrap();
        std::fs::write(md.join("new/2.host"), "Subject: new\n\n").unwrap();
        std::fs::write(md.join("tmp/3.host"), "Subject: tmp\n\n").unwrap();
        std::fs::write(md.join("dovecot-uidlist"), "3 V1 N2\n").unwrap();
        std::fs::write(md.join(".Sent/new/4.host"), "Subject: sent\n\n").unwrap();
        std::fs::write(md.join(".Sent/tmp/5.host"), "Subject: sent tmp\n\n").unwrap();
        std::fs::create_dir_all(root.join("plain/deeper")).unwrap();
        std::fs::write(root.join("plain/deeper/a.eml"), "Subject: deep\n\n").unwrap();
        std::fs::write(root.join("plain/.DS_Store"), "junk").unwrap();
        let got: Vec<String> = Messages::new(&[root.to_path_buf()], 1000)
            .map(|m| String::from_utf8(m.unwrap().bytes).unwrap())
            .collect();
        assert_eq!(got, ["Subject: sent\n\n", "Subject: cur\n\n", "Subject: new\n\n", "Subject: deep\n\n"]);
    }

    #[test]
    fn files_of_a_directory_are_read_in_the_byte_order_of_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["b", "a.b", "a", "a-b", "B", "a0", "ab"];
        for name in names {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let got: Vec<String> = Messages::new(&[dir.path().to_path_buf()], 1000)
            .map(|m| String::from_utf8(m.unwrap().bytes).unwrap())
            .collect();
        assert_eq!(got, ["B", "a", "a-b", "a.b", "a0", "ab", "b"]);
    }

    #[test]
    fn missing_and_oversized_files_are_errors_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.eml");
        std::fs::write(&big, vec![b'x'; 2000]).unwrap();
        let ok = dir.path().join("ok.eml");
        std::fs::write(&ok, "Subject: ok\n\n").unwrap();
        let items: Vec<_> = Messages::new(&[dir.path().join("missing"), big, ok.clone()], 1024).collect();
        assert_eq!(items.len(), 3);
        assert!(matches!(&items[0], Err(ReadError::Io { .. })));
        let e = items[1].as_ref().unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { size: 2000, limit: 1024, .. }), "{e}");
        assert!(e.to_string().contains("over the limit"), "{e}");
        let m = items[2].as_ref().unwrap();
        assert_eq!((m.path.as_path(), m.index), (ok.as_path(), None));
        assert_eq!(m.source(), format!("file:{}", ok.display()));
    }

    #[test]
    fn file_starting_with_a_from_line_is_read_as_mbox() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("one.eml");
        std::fs::write(&p, "From MAILER-DAEMON Mon Jan  1 00:00:00 2024\nSubject: x\n\n>From y\n").unwrap();
        let items: Vec<_> = Messages::new(&[p], 1024).map(Result::unwrap).collect();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].bytes, b"Subject: x\n\nFrom y\n");
    }
}
