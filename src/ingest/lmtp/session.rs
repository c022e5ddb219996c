//! One LMTP connection (RFC 2033 on top of RFC 5321): LHLO, MAIL, RCPT, DATA, RSET, NOOP, VRFY, QUIT with
//! PIPELINING (RFC 2920), SIZE (RFC 1870), ENHANCEDSTATUSCODES (RFC 2034) and 8BITMIME (RFC 6152).
//!
//! After the data of a message the server answers once per accepted recipient (RFC 2033 §4.2): 250 only
//! after the message is committed, 451 4.3.0 if anything failed before, 552 5.3.4 when it is over the size
//! limit. The message is stored once with all its envelope recipients, so every reply carries the same
//! verdict.
//!
//! Two clocks bound a client: every command line and every data line must be complete within
//! `idle_timeout`, and a whole transaction, from MAIL to the final `.` of its data, within
//! `transaction_timeout`, so a client that trickles its message a line at a time cannot hold a connection
//! slot for longer than that. Either ends the session with `421 4.4.2`; the message is not acknowledged.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::LmtpConfig;
use crate::ingest::writer::Writer;
use crate::store::SaveOutcome;

/// Longest command line accepted, CRLF included. RFC 5321 §4.5.3.1.4 sets 512 and lets extensions add to
/// it; we allow room for long addresses and parameters.
pub const MAX_COMMAND_LINE: usize = 2048;
/// Data lines are read in pieces of at most this size; a line may be longer (it only counts towards the
/// message size), but memory stays bounded.
const DATA_SEGMENT: usize = 64 * 1024;
/// Client errors (unknown, malformed or out-of-order commands) tolerated on one connection; the next one
/// closes it, so a peer sending garbage does not hold a session forever.
const MAX_ERRORS: u32 = 10;
/// Messages larger than this are parsed on a blocking thread, so a huge one does not stall other sessions.
const PARSE_INLINE_MAX: usize = 256 * 1024;

/// What every session shares: the limits and the writer.
pub struct Context {
    config: LmtpConfig,
    writer: Writer,
    hostname: String,
}

impl Context {
    /// Sessions with these limits, storing through `writer`.
    pub fn new(config: LmtpConfig, writer: Writer) -> Context {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty() && h.is_ascii())
            .unwrap_or_else(|| "localhost".to_string());
        Context { config, writer, hostname }
    }
}

/// A command of the client, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `LHLO domain`.
    Lhlo,
    /// `HELO`/`EHLO`: SMTP greetings, refused in LMTP.
    SmtpHello,
    /// `MAIL FROM:<path> [SIZE=n] [BODY=...]`; the reverse path is empty for the null sender.
    Mail {
        /// The reverse path without angle brackets.
        from: String,
        /// The declared size, if any.
        size: Option<u64>,
    },
    /// `RCPT TO:<path>`.
    Rcpt(String),
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `VRFY`.
    Vrfy,
    /// `QUIT`.
    Quit,
}

/// A refusal of a command line: the full reply line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// Parse one command line (CRLF or LF removed).
pub fn parse_command(line: &[u8]) -> Result<Command, Refusal> {
    let line = std::str::from_utf8(line).map_err(|_| Refusal("500 5.5.2 Syntax error: not ASCII text"))?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let no_args = |c: Command| if rest.is_empty() { Ok(c) } else { Err(Refusal("501 5.5.4 Syntax error: no arguments allowed")) };
    match verb.to_ascii_uppercase().as_str() {
        "LHLO" if rest.is_empty() => Err(Refusal("501 5.5.4 Syntax: LHLO hostname")),
        "LHLO" => Ok(Command::Lhlo),
        "HELO" | "EHLO" => Ok(Command::SmtpHello),
        "MAIL" => {
            let (from, params) = path_after(rest, "FROM:").ok_or(Refusal("501 5.5.4 Syntax: MAIL FROM:<address>"))?;
            let mut size = None;
            for param in params.split_ascii_whitespace() {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                match key.to_ascii_uppercase().as_str() {
                    "SIZE" => size = Some(value.parse().map_err(|_| Refusal("501 5.5.4 Syntax: SIZE=number"))?),
                    "BODY" if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {}
                    _ => return Err(Refusal("555 5.5.4 Unsupported MAIL parameter")),
                }
            }
            Ok(Command::Mail { from, size })
        }
        "RCPT" => {
            let (to, params) = path_after(rest, "TO:").ok_or(Refusal("501 5.5.4 Syntax: RCPT TO:<address>"))?;
            if to.is_empty() {
                return Err(Refusal("501 5.1.3 Empty recipient address"));
            }
            if !params.trim().is_empty() {
                return Err(Refusal("555 5.5.4 Unsupported RCPT parameter"));
            }
            Ok(Command::Rcpt(to))
        }
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "QUIT" => no_args(Command::Quit),
        "" => Err(Refusal("500 5.5.2 Syntax error: empty command")),
        _ => Err(Refusal("500 5.5.1 Command unrecognized")),
    }
}

/// `FROM:<path> params` → (address, params). Accepts a space after the colon and a path without brackets;
/// drops an RFC 5321 source route (`<@a,@b:user@c>`).
fn path_after<'a>(rest: &'a str, keyword: &str) -> Option<(String, &'a str)> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest[keyword.len()..].trim_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        (&inner[..end], &inner[end + 1..])
    } else {
        let end = rest.find(' ').unwrap_or(rest.len());
        (&rest[..end], &rest[end..])
    };
    let path = match path.strip_prefix('@') {
        Some(routed) => &routed[routed.find(':')? + 1..],
        None => path,
    };
    if path.contains(|c: char| c.is_ascii_control() || c == ' ' || c == '<' || c == '>') {
        return None;
    }
    Some((path.to_string(), params))
}

/// Why the session stopped waiting for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A command or data line was not complete within `idle_timeout`.
    Idle,
    /// The transaction (MAIL to the end of its data) was not complete within `transaction_timeout`.
    Transaction,
}

impl Expired {
    /// The reply that closes the session.
    pub fn reply(self) -> &'static str {
        match self {
            Expired::Idle => "421 4.4.2 Idle timeout, closing connection",
            Expired::Transaction => "421 4.4.2 Transaction time limit exceeded, closing connection",
        }
    }
}

/// Runs `f` for at most `idle`, and not past `deadline` when there is one; which of the two expired
/// otherwise.
async fn within<T>(idle: Duration, deadline: Option<Instant>, f: impl Future<Output = T>) -> Result<T, Expired> {
    let idle_end = Instant::now() + idle;
    let (end, expired) = match deadline {
        Some(d) if d < idle_end => (d, Expired::Transaction),
        _ => (idle_end, Expired::Idle),
    };
    tokio::time::timeout_at(end, f).await.map_err(|_| expired)
}

/// What came after DATA.
#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    /// The message, dot-unstuffed, without the final `.` line.
    Complete(Vec<u8>),
    /// The message was over the limit; it was read to its end and dropped. Its size.
    TooLarge(u64),
    /// The connection ended before the final `.` line.
    Eof,
    /// A line did not come within `idle`, or the data was not complete by the deadline.
    Expired(Expired),
}

/// Read message data up to the `.` line (RFC 5321 §4.5.2: a leading dot is removed from every other line).
/// A bare-LF `.` line is accepted as the end too. Each line must come within `idle`, and the whole data
/// before `deadline` (the end of the transaction's time) when there is one.
pub async fn read_data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
    idle: Duration,
    deadline: Option<Instant>,
) -> std::io::Result<Data> {
    let mut data = Vec::new();
    let mut size: u64 = 0;
    let mut segment = Vec::with_capacity(1024);
    let mut at_line_start = true;
    loop {
        segment.clear();
        let n = match within(idle, deadline, read_segment(reader, &mut segment, DATA_SEGMENT)).await {
            Ok(n) => n?,
            Err(expired) => return Ok(Data::Expired(expired)),
        };
        if n == 0 {
            return Ok(Data::Eof);
        }
        if at_line_start && (segment == b".\r\n" || segment == b".\n") {
            break;
        }
        let content = if at_line_start && segment[0] == b'.' { &segment[1..] } else { &segment[..] };
        size += content.len() as u64;
        if size <= limit as u64 {
            data.extend_from_slice(content);
        } else if !data.is_empty() {
            data = Vec::new();
        }
        at_line_start = segment.ends_with(b"\n");
    }
    if size > limit as u64 { Ok(Data::TooLarge(size)) } else { Ok(Data::Complete(data)) }
}

/// Append bytes up to and including the next LF, at most `cap`; returns how many (0 at the end of input).
async fn read_segment<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>, cap: usize) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(total);
        }
        let (n, line_ended) = crate::ingest::take_line(available, buf, cap - total, b'\n');
        reader.consume(n);
        total += n;
        if line_ended || total >= cap {
            return Ok(total);
        }
    }
}

/// A command line as read.
enum Line {
    /// A full line (LF included).
    Complete,
    /// Longer than [`MAX_COMMAND_LINE`]; it was read to its end and dropped.
    TooLong,
    /// The client closed the connection.
    Eof,
}

async fn read_command<R: AsyncBufRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Line> {
    buf.clear();
    let n = read_segment(reader, buf, MAX_COMMAND_LINE).await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.ends_with(b"\n") {
        return Ok(Line::Complete);
    }
    loop {
        buf.clear();
        let n = read_segment(reader, buf, MAX_COMMAND_LINE).await?;
        if n == 0 {
            return Ok(Line::Eof);
        }
        if buf.ends_with(b"\n") {
            return Ok(Line::TooLong);
        }
    }
}

/// Speak LMTP on one connection until QUIT, a disconnect, the idle timeout or the shutdown.
pub async fn run<S>(stream: S, peer: SocketAddr, context: &Context, shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tracing::debug!(%peer, "LMTP connection");
    let (r, w) = tokio::io::split(stream);
    let mut session = Session {
        context,
        reader: BufReader::with_capacity(DATA_SEGMENT, r),
        out: BufWriter::new(w),
        shutdown,
        peer,
        greeted: false,
        from: None,
        deadline: None,
        recipients: Vec::new(),
        errors: 0,
    };
    // One message at a time per connection: the writer knows it need not wait for a second one.
    let _producer = context.writer.producer();
    match session.converse().await {
        Ok(()) => tracing::debug!(%peer, "LMTP connection closed"),
        Err(e) => tracing::debug!(%peer, error = %e, "LMTP connection ended"),
    }
}

struct Session<'a, R, W> {
    context: &'a Context,
    reader: BufReader<R>,
    out: BufWriter<W>,
    shutdown: watch::Receiver<bool>,
    peer: SocketAddr,
    greeted: bool,
    /// The reverse path of the transaction in progress (empty for the null sender).
    from: Option<String>,
    /// When the transaction in progress must be complete (its data read): MAIL + `transaction_timeout`.
    deadline: Option<Instant>,
    recipients: Vec<String>,
    errors: u32,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<'_, R, W> {
    async fn reply(&mut self, line: &str) -> std::io::Result<()> {
        self.out.write_all(line.as_bytes()).await?;
        self.out.write_all(b"\r\n").await
    }

    /// Reply and close the connection.
    async fn close(&mut self, line: &str) -> std::io::Result<()> {
        self.reply(line).await?;
        self.out.flush().await?;
        self.out.shutdown().await
    }

    /// Close the connection of a client too slow for `expired`'s clock; a transaction cut short is logged
    /// (its message was not acknowledged, an MTA sends it again).
    async fn expire(&mut self, expired: Expired) -> std::io::Result<()> {
        if expired == Expired::Transaction {
            tracing::warn!(peer = %self.peer, limit = ?self.context.config.transaction_timeout,
                           "LMTP transaction not complete within transaction_timeout; closing the connection");
        }
        self.close(expired.reply()).await
    }

    async fn converse(&mut self) -> std::io::Result<()> {
        let idle = self.context.config.idle_timeout;
        self.reply(&format!("220 {} rebound LMTP ready", self.context.hostname)).await?;
        let mut line = Vec::with_capacity(256);
        loop {
            // PIPELINING (RFC 2920): replies to a group of commands go out together, before the server waits.
            if self.reader.buffer().is_empty() {
                self.out.flush().await?;
            }
            let read = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|stop| *stop) => None,
                read = within(idle, self.deadline, read_command(&mut self.reader, &mut line)) => Some(read),
            };
            let Some(read) = read else {
                return self.close("421 4.3.2 Service shutting down, try again later").await;
            };
            let command = match read {
                Err(expired) => return self.expire(expired).await,
                Ok(read) => match read? {
                    Line::Eof => return Ok(()),
                    Line::TooLong => Err(Refusal("500 5.5.2 Line too long")),
                    Line::Complete => parse_command(&line),
                },
            };
            let command = match command {
                Ok(c) => c,
                Err(Refusal(text)) => {
                    if self.refuse(text).await? {
                        return Ok(());
                    }
                    continue;
                }
            };
            match command {
                Command::Lhlo => {
                    self.greeted = true;
                    self.reset();
                    let text = format!(
                        "250-{}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {}",
                        self.context.hostname, self.context.config.max_message_size
                    );
                    self.reply(&text).await?;
                }
                Command::SmtpHello => {
                    if self.refuse("500 5.5.1 This is an LMTP server: say LHLO").await? {
                        return Ok(());
                    }
                }
                Command::Mail { from, size } => {
                    if !self.greeted || self.from.is_some() {
                        let text = if self.greeted { "503 5.5.1 Nested MAIL command" } else { "503 5.5.1 Say LHLO first" };
                        if self.refuse(text).await? {
                            return Ok(());
                        }
                    } else if size.is_some_and(|s| s > self.context.config.max_message_size as u64) {
                        let text = format!(
                            "552 5.3.4 Message too big for system (limit {} bytes)",
                            self.context.config.max_message_size
                        );
                        self.reply(&text).await?;
                    } else {
                        self.from = Some(from);
                        self.deadline = Some(Instant::now() + self.context.config.transaction_timeout);
                        self.reply("250 2.1.0 Sender ok").await?;
                    }
                }
                Command::Rcpt(to) => {
                    if self.from.is_none() {
                        if self.refuse("503 5.5.1 Need MAIL before RCPT").await? {
                            return Ok(());
                        }
                    } else if self.recipients.len() >= self.context.config.max_recipients {
                        self.reply("452 4.5.3 Too many recipients").await?;
                    } else {
                        self.recipients.push(to);
                        self.reply("250 2.1.5 Recipient ok").await?;
                    }
                }
                Command::Data => {
                    if self.recipients.is_empty() {
                        // RFC 2033 §4.2: DATA without a successful RCPT fails with 503.
                        if self.refuse("503 5.5.1 No valid recipients").await? {
                            return Ok(());
                        }
                    } else {
                        self.reply("354 Start mail input; end with <CRLF>.<CRLF>").await?;
                        self.out.flush().await?;
                        let limit = self.context.config.max_message_size;
                        match read_data(&mut self.reader, limit, idle, self.deadline).await? {
                            Data::Eof => return Ok(()),
                            Data::Expired(expired) => return self.expire(expired).await,
                            Data::TooLarge(size) => {
                                tracing::warn!(size, limit, "LMTP message over the size limit refused");
                                let text = format!("552 5.3.4 Message too big for system (limit {limit} bytes)");
                                for _ in 0..self.recipients.len() {
                                    self.reply(&text).await?;
                                }
                            }
                            Data::Complete(raw) => self.deliver(raw).await?,
                        }
                        self.reset();
                    }
                }
                Command::Rset => {
                    self.reset();
                    self.reply("250 2.0.0 Ok").await?;
                }
                Command::Noop => self.reply("250 2.0.0 Ok").await?,
                Command::Vrfy => self.reply("252 2.5.2 Cannot VRFY user; send a message and it will be stored").await?,
                Command::Quit => return self.close("221 2.0.0 Bye").await,
            }
        }
    }

    /// Answer a client error; after [`MAX_ERRORS`] of them say 421 and close instead. Returns whether the
    /// connection is closed.
    async fn refuse(&mut self, text: &str) -> std::io::Result<bool> {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.close("421 4.7.0 Too many errors, closing connection").await?;
            return Ok(true);
        }
        self.reply(text).await?;
        Ok(false)
    }

    fn reset(&mut self) {
        self.from = None;
        self.deadline = None;
        self.recipients.clear();
    }

    /// Store one message and answer once per recipient.
    async fn deliver(&mut self, raw: Vec<u8>) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        let from = self.from.clone().filter(|f| !f.is_empty());
        let to = self.recipients.clone();
        let message = if raw.len() <= PARSE_INLINE_MAX {
            Ok(super::super::prepare(raw, "lmtp".to_string(), from, to))
        } else {
            tokio::task::spawn_blocking(move || super::super::prepare(raw, "lmtp".to_string(), from, to)).await
        };
        let outcome = match message {
            Ok(message) => self.context.writer.save(message).await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot parse the message: {e}")),
        };
        let (code, text) = match outcome {
            Ok(SaveOutcome::Stored { message_id }) => {
                tracing::debug!(message_id, recipients = self.recipients.len(), "LMTP message stored");
                ("250 2.0.0", format!("Ok: stored as message {message_id}"))
            }
            Ok(SaveOutcome::Duplicate { message_id }) => {
                tracing::debug!(message_id, "LMTP message was a duplicate");
                ("250 2.0.0", format!("Ok: already stored as message {message_id}"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "LMTP message not stored; answering 451");
                ("451 4.3.0", "Temporary failure storing the message, try again later".to_string())
            }
        };
        for rcpt in &self.recipients {
            self.out.write_all(format!("{code} <{rcpt}> {text}\r\n").as_bytes()).await?;
        }
        crate::metrics::observe_lmtp(started.elapsed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mail_with_parameters_and_the_null_sender() {
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example> SIZE=1234 BODY=8BITMIME\r\n"),
            Ok(Command::Mail { from: "a@b.example".into(), size: Some(1234) })
        );
        assert_eq!(parse_command(b"mail from: <>\r\n"), Ok(Command::Mail { from: String::new(), size: None }));
        assert_eq!(parse_command(b"MAIL FROM:<@relay.example:u@x.example>\n"), Ok(Command::Mail { from: "u@x.example".into(), size: None }));
        assert_eq!(parse_command(b"MAIL FROM:<a@b> RET=FULL\r\n"), Err(Refusal("555 5.5.4 Unsupported MAIL parameter")));
        assert_eq!(parse_command(b"MAIL FROM:<a@b> SIZE=big\r\n"), Err(Refusal("501 5.5.4 Syntax: SIZE=number")));
        assert!(parse_command(b"MAIL TO:<a@b>\r\n").is_err());
        assert!(parse_command(b"MAIL FROM:<a@b\r\n").is_err());
    }

    #[test]
    fn parses_rcpt_and_refuses_empty_or_parameters() {
        assert_eq!(parse_command(b"RCPT TO:<Postmaster@x.example>\r\n"), Ok(Command::Rcpt("Postmaster@x.example".into())));
        assert_eq!(parse_command(b"RCPT TO:<>\r\n"), Err(Refusal("501 5.1.3 Empty recipient address")));
        assert!(parse_command(b"RCPT TO:<a@b> NOTIFY=NEVER\r\n").is_err());
    }

    #[test]
    fn other_commands() {
        assert_eq!(parse_command(b"LHLO mx.example\r\n"), Ok(Command::Lhlo));
        assert!(parse_command(b"LHLO\r\n").is_err());
        assert_eq!(parse_command(b"EHLO mx.example\r\n"), Ok(Command::SmtpHello));
        assert_eq!(parse_command(b"data\r\n"), Ok(Command::Data));
        assert!(parse_command(b"DATA now\r\n").is_err());
        assert_eq!(parse_command(b"QUIT\r\n"), Ok(Command::Quit));
        assert_eq!(parse_command(b"NOOP anything\r\n"), Ok(Command::Noop));
        assert_eq!(parse_command(b"\r\n"), Err(Refusal("500 5.5.2 Syntax error: empty command")));
        assert_eq!(parse_command(b"\xff\xfe\r\n"), Err(Refusal("500 5.5.2 Syntax error: not ASCII text")));
        assert_eq!(parse_command(b"STARTTLS\r\n"), Err(Refusal("500 5.5.1 Command unrecognized")));
    }

    #[tokio::test]
    async fn data_is_dot_unstuffed_up_to_the_dot_line() {
        let mut input: &[u8] = b"Subject: x\r\n\r\n..leading dot\r\n.\r\nNOOP\r\n";
        let data = read_data(&mut input, 1000, Duration::from_secs(1), None).await.unwrap();
        assert_eq!(data, Data::Complete(b"Subject: x\r\n\r\n.leading dot\r\n".to_vec()));
        assert_eq!(input, b"NOOP\r\n");
    }

    #[tokio::test]
    async fn empty_data_and_bare_lf_end() {
        let mut input: &[u8] = b".\n";
        assert_eq!(read_data(&mut input, 1000, Duration::from_secs(1), None).await.unwrap(), Data::Complete(Vec::new()));
    }

    #[tokio::test]
    async fn data_over_the_limit_is_drained_to_the_end() {
        let mut text = b"Subject: big\r\n\r\n".to_vec();
        for _ in 0..100 {
            text.extend_from_slice(&[b'x'; 100]);
            text.extend_from_slice(b"\r\n");
        }
        text.extend_from_slice(b".\r\nQUIT\r\n");
        let mut input: &[u8] = &text;
        let data = read_data(&mut input, 1024, Duration::from_secs(1), None).await.unwrap();
        assert!(matches!(data, Data::TooLarge(n) if n > 10_000), "{data:?}");
        assert_eq!(input, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn data_cut_off_is_eof() {
        let mut input: &[u8] = b"Subject: x\r\n\r\nno end";
        assert_eq!(read_data(&mut input, 1000, Duration::from_secs(1), None).await.unwrap(), Data::Eof);
    }

    #[tokio::test]
    async fn overlong_lines_in_data_are_kept_whole() {
        let mut text = vec![b'y'; DATA_SEGMENT * 2 + 5];
        text.extend_from_slice(b"\r\n.\r\n");
        let mut input: &[u8] = &text;
        let data = read_data(&mut input, DATA_SEGMENT * 4, Duration::from_secs(1), None).await.unwrap();
        assert!(matches!(&data, Data::Complete(d) if d.len() == DATA_SEGMENT * 2 + 7));
    }

    #[tokio::test]
    async fn a_trickled_message_expires_at_the_deadline_and_a_silent_one_at_idle() {
        // Lines that each come well within `idle`, but not the whole message by the deadline.
        let (mut client, server) = tokio::io::duplex(1024);
        let trickle = tokio::spawn(async move {
            while client.write_all(b"X-Drip: x\r\n").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut reader = BufReader::new(server);
        let started = Instant::now();
        let deadline = Some(started + Duration::from_millis(300));
        let data = read_data(&mut reader, 1 << 20, Duration::from_secs(5), deadline).await.unwrap();
        assert_eq!(data, Data::Expired(Expired::Transaction));
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        drop(reader);
        trickle.await.unwrap();

        let (_client, server) = tokio::io::duplex(1024);
        let mut reader = BufReader::new(server);
        let far = Some(Instant::now() + Duration::from_secs(60));
        let data = read_data(&mut reader, 1000, Duration::from_millis(100), far).await.unwrap();
        assert_eq!(data, Data::Expired(Expired::Idle));
    }

    #[tokio::test]
    async fn overlong_command_line_is_refused_and_the_next_one_read() {
        let mut text = vec![b'N'; MAX_COMMAND_LINE * 3];
        text.extend_from_slice(b"\r\nNOOP\r\n");
        let mut input: &[u8] = &text;
        let mut buf = Vec::new();
        assert!(matches!(read_command(&mut input, &mut buf).await.unwrap(), Line::TooLong));
        assert!(matches!(read_command(&mut input, &mut buf).await.unwrap(), Line::Complete));
        assert_eq!(buf, b"NOOP\r\n");
    }
}
