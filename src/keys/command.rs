//! Customer-managed keys behind an external program: `command:PROGRAM[#VERSION]`. The
//! program bridges to a cloud KMS (Azure Key Vault, AWS KMS, ...) and speaks a small JSON
//! protocol, one request on its stdin and one reply on its stdout per run; docs/KMS.md
//! specifies it. Secrets travel only through the pipes, never in arguments or the
//! environment, and every buffer that holds the volume key is zeroized.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::secure_file::check_trusted_file;
use super::{KeyDescription, KeyError, KeyKind, KeyProvider, Protector};
use crate::crypto::VolumeKey;
use crate::io_error::io_error;

/// The protocol version this xtsfs speaks (`xtsfs_kms` in every message).
pub const PROTOCOL_VERSION: u64 = 1;
/// How long one run of the program may take unless [`TIMEOUT_ENV`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Seconds (`45`) or a duration (`90s`, `2m`) one run of the program may take.
pub const TIMEOUT_ENV: &str = "XTSFS_KMS_TIMEOUT";
const MAX_REPLY_LEN: usize = 64 * 1024;
const MAX_STDERR_LEN: usize = 8 * 1024;
/// How much of the program's own words (stderr, error messages) an error repeats.
const MAX_QUOTED_LEN: usize = 600;

const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Op {
    Check,
    Wrap,
    Unwrap,
}

#[derive(Serialize)]
struct Request<'a> {
    xtsfs_kms: u64,
    op: Op,
    /// `null` asks for the newest version.
    key_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ciphertext: Option<&'a str>,
}

/// Read first, alone, so that a reply in another protocol version is reported as that
/// rather than as whatever field of it does not parse.
#[derive(Deserialize)]
struct Envelope {
    xtsfs_kms: Option<u64>,
}

#[derive(Deserialize)]
struct Reply {
    ok: Option<bool>,
    key_id: Option<String>,
    key_version: Option<String>,
    algorithm: Option<String>,
    ciphertext: Option<String>,
    plaintext: Option<Zeroizing<String>>,
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    kind: Option<String>,
    message: Option<String>,
}

/// An `"ok": true` reply, checked.
struct Answer {
    key: KeyDescription,
    ciphertext: Option<String>,
    plaintext: Option<Zeroizing<String>>,
}

pub struct CommandProvider {
    program: PathBuf,
    version: Option<String>,
    timeout: Duration,
}

impl CommandProvider {
    /// Checks who may replace the program (see [`check_trusted_file`]) and reads
    /// [`TIMEOUT_ENV`]; the program is not run yet.
    pub fn open(program: &Path, version: Option<&str>) -> Result<Self, KeyError> {
        let program = std::path::absolute(program).map_err(io_error("cannot resolve", program))?;
        check_trusted_file(&program, "KMS command")?;
        Ok(CommandProvider {
            program,
            version: version.map(str::to_owned),
            timeout: timeout_from_env()?,
        })
    }

    /// Lowers the per-run time limit to `cap` if it is longer (a key check's deadline).
    pub fn with_timeout_at_most(mut self, cap: Duration) -> Self {
        self.timeout = self.timeout.min(cap);
        self
    }

    fn name(&self) -> String {
        program_name(&self.program)
    }

    fn key_ref(&self) -> String {
        super::KeyRef::Command {
            program: self.program.clone(),
            version: self.version.clone(),
        }
        .to_string()
    }

    /// Runs the program with one request and checks its reply.
    fn call(&self, request: &Request<'_>) -> Result<Answer, KeyError> {
        let output = self.run(request)?;
        let reply = parse_reply(&output.stdout, &self.program)?;
        match reply.ok {
            Some(true) if !output.status.success() => {
                Err(self.protocol(format!("it replied ok but exited with {}", output.status)))
            }
            Some(true) => self.answer(request, reply),
            Some(false) => Err(self.refusal(request.op, reply.error)),
            None => Err(self.protocol("the reply has no \"ok\" field".into())),
        }
    }

    fn answer(&self, request: &Request<'_>, reply: Reply) -> Result<Answer, KeyError> {
        let field = |value: Option<String>, name: &str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or_else(|| self.protocol(format!("the reply has no \"{name}\"")))
        };
        let key = KeyDescription {
            kind: KeyKind::Command,
            key_id: field(reply.key_id, "key_id")?,
            key_version: field(reply.key_version, "key_version")?,
            algorithm: field(reply.algorithm, "algorithm")?,
            key_ref: self.key_ref(),
        };
        super::validate_key_version(&key.key_version)
            .map_err(|e| self.protocol(format!("its reply's {e}")))?;
        if let Some(asked) = request.key_version.filter(|v| *v != key.key_version) {
            return Err(self.protocol(format!(
                "asked for key version '{asked}', it answered for version '{}'",
                key.key_version
            )));
        }
        let answer = Answer {
            key,
            ciphertext: reply.ciphertext,
            plaintext: reply.plaintext,
        };
        match request.op {
            Op::Wrap if answer.ciphertext.is_none() => {
                Err(self.protocol("the wrap reply has no \"ciphertext\"".into()))
            }
            Op::Unwrap if answer.plaintext.is_none() => {
                Err(self.protocol("the unwrap reply has no \"plaintext\"".into()))
            }
            _ => Ok(answer),
        }
    }

    fn refusal(&self, op: Op, error: Option<ReplyError>) -> KeyError {
        let Some(error) = error else {
            return self.protocol("the reply says ok: false but has no \"error\"".into());
        };
        let message = quote(error.message.as_deref().unwrap_or("no message"));
        let key = self.name();
        match error.kind.as_deref() {
            Some("denied") => KeyError::Denied {
                key,
                detail: message,
            },
            Some("not-found") => KeyError::NotFound(format!("{key}: {message}")),
            Some("unavailable") => KeyError::Unavailable {
                key,
                detail: message,
            },
            Some("invalid") if op == Op::Unwrap => KeyError::UnwrapFailed {
                key,
                detail: message,
            },
            Some("invalid") => self.protocol(format!("it called the request invalid: {message}")),
            Some(other) => {
                self.protocol(format!("unknown error kind '{}': {message}", quote(other)))
            }
            None => self.protocol(format!("the error has no \"kind\": {message}")),
        }
    }

    fn protocol(&self, detail: String) -> KeyError {
        KeyError::Protocol {
            program: self.program.clone(),
            detail,
        }
    }

    /// Spawns the program in its own process group, writes the request, and collects its
    /// stdout and exit status. On timeout the whole group is killed, so a `sleep` or `curl`
    /// the program started does not outlive it.
    fn run(&self, request: &Request<'_>) -> Result<ProgramOutput, KeyError> {
        let request = encode_request(request)
            .map_err(io_error("cannot encode the request for", &self.program))?;
        let deadline = Instant::now() + self.timeout;
        let mut child = Command::new(&self.program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| KeyError::Unavailable {
                key: self.name(),
                detail: format!("cannot run it: {e}"),
            })?;
        let group = child.id() as libc::pid_t;
        let _running = RunningGroup::register(group);
        let stdout = read_in_background(child.stdout.take(), MAX_REPLY_LEN);
        let stderr = read_in_background(child.stderr.take(), MAX_STDERR_LEN);
        if let Some(mut stdin) = child.stdin.take() {
            // A program that exits without reading its request is judged by its reply.
            match stdin.write_all(&request) {
                Err(e) if e.kind() != ErrorKind::BrokenPipe => {
                    kill_group(group);
                    let _ = child.wait();
                    return Err(KeyError::Unavailable {
                        key: self.name(),
                        detail: format!("cannot write the request: {e}"),
                    });
                }
                _ => {}
            }
        }
        let (exited_tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = exited_tx.send(child.wait());
        });
        let timed_out = || {
            kill_group(group);
            KeyError::Unavailable {
                key: self.name(),
                detail: format!(
                    "it did not finish within {} and was killed (set {TIMEOUT_ENV} to allow longer)",
                    humantime::format_duration(self.timeout)
                ),
            }
        };
        let status = match exited.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(status) => status.map_err(|e| KeyError::Unavailable {
                key: self.name(),
                detail: format!("cannot wait for it: {e}"),
            })?,
            Err(_) => return Err(timed_out()),
        };
        // Something the program left running may still hold its stdout open.
        let stdout = stdout
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| timed_out())?;
        // Only for error messages: not worth waiting for.
        let stderr = stderr
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let stdout = stdout.map_err(|e| KeyError::Unavailable {
            key: self.name(),
            detail: format!("cannot read its reply: {e}"),
        })?;
        if stdout.len() > MAX_REPLY_LEN {
            return Err(self.protocol(format!("the reply is longer than {MAX_REPLY_LEN} bytes")));
        }
        if stdout.iter().all(u8::is_ascii_whitespace) {
            let said = stderr_tail(&stderr);
            return Err(if status.success() {
                self.protocol(format!("it exited without a reply{said}"))
            } else {
                KeyError::Unavailable {
                    key: self.name(),
                    detail: format!("it exited with {status} and no reply{said}"),
                }
            });
        }
        Ok(ProgramOutput { status, stdout })
    }
}

struct ProgramOutput {
    status: ExitStatus,
    stdout: Zeroizing<Vec<u8>>,
}

impl KeyProvider for CommandProvider {
    fn describe(&self) -> Result<KeyDescription, KeyError> {
        let answer = self.call(&Request {
            xtsfs_kms: PROTOCOL_VERSION,
            op: Op::Check,
            key_version: self.version.as_deref(),
            plaintext: None,
            ciphertext: None,
        })?;
        Ok(answer.key)
    }

    fn wrap(&self, dek: &VolumeKey) -> Result<Protector, KeyError> {
        let plaintext = Zeroizing::new(BASE64.encode(dek.expose()));
        let answer = self.call(&Request {
            xtsfs_kms: PROTOCOL_VERSION,
            op: Op::Wrap,
            key_version: self.version.as_deref(),
            plaintext: Some(&plaintext),
            ciphertext: None,
        })?;
        let wrapped = answer
            .ciphertext
            .as_deref()
            .and_then(|c| BASE64.decode(c).ok())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| self.protocol("the wrap reply's ciphertext is not base64".into()))?;
        Ok(Protector::new(answer.key, &wrapped))
    }

    /// The protector is this program's if the program names the same key id (asked
    /// without the recorded version, which another key need not have); only then is the
    /// wrapped key sent for unwrapping.
    fn unwrap(&self, protector: &Protector) -> Option<Result<VolumeKey, KeyError>> {
        if protector.key.kind != KeyKind::Command {
            return None;
        }
        match self.describe() {
            Ok(current) if current.key_id != protector.key.key_id => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(e)),
        }
        let version = protector.key.key_version.as_str();
        if let Err(e) = super::validate_key_version(version) {
            return Some(Err(KeyError::UnwrapFailed {
                key: self.name(),
                detail: format!("the protector's {e}"),
            }));
        }
        Some((|| {
            protector.wrapped_for(&self.name())?;
            let answer = self.call(&Request {
                xtsfs_kms: PROTOCOL_VERSION,
                op: Op::Unwrap,
                key_version: Some(version),
                plaintext: None,
                ciphertext: Some(&protector.wrapped_key),
            })?;
            if answer.key.key_id != protector.key.key_id {
                return Err(KeyError::WrongKey {
                    needed: protector.key.to_string(),
                    given: answer.key.to_string(),
                });
            }
            let encoded = answer.plaintext.as_deref().map_or("", String::as_str);
            let plain =
                Zeroizing::new(BASE64.decode(encoded).map_err(|_| {
                    self.protocol("the unwrap reply's plaintext is not base64".into())
                })?);
            VolumeKey::from_bytes(&plain).ok_or_else(|| KeyError::UnwrapFailed {
                key: self.name(),
                detail: format!("the unwrapped key is {} bytes long", plain.len()),
            })
        })())
    }
}

/// The request as one JSON line, in a buffer sized up front so that serializing never
/// reallocates and leaves a copy of the key behind.
fn encode_request(request: &Request<'_>) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
    let variable = [request.key_version, request.plaintext, request.ciphertext]
        .iter()
        .flatten()
        .map(|s| s.len() * 6) // worst case: every byte escaped as \u00XX
        .sum::<usize>();
    let mut buffer = Zeroizing::new(Vec::with_capacity(256 + variable));
    serde_json::to_writer(&mut *buffer, request)?;
    buffer.push(b'\n');
    Ok(buffer)
}

fn parse_reply(stdout: &[u8], program: &Path) -> Result<Reply, KeyError> {
    let malformed = |e: serde_json::Error| KeyError::Protocol {
        program: program.into(),
        // Only where it went wrong, never serde's text: that can quote the input, and the
        // input may hold the volume key.
        detail: match e.classify() {
            serde_json::error::Category::Data => format!(
                "a reply field has the wrong type (line {}, column {})",
                e.line(),
                e.column()
            ),
            _ => format!(
                "the reply is not one JSON object (line {}, column {})",
                e.line(),
                e.column()
            ),
        },
    };
    let envelope: Envelope = serde_json::from_slice(stdout).map_err(malformed)?;
    match envelope.xtsfs_kms {
        Some(PROTOCOL_VERSION) => serde_json::from_slice(stdout).map_err(malformed),
        Some(other) => Err(KeyError::Protocol {
            program: program.into(),
            detail: format!(
                "it speaks protocol version {other}; this xtsfs speaks version {PROTOCOL_VERSION}"
            ),
        }),
        None => Err(KeyError::Protocol {
            program: program.into(),
            detail: "the reply has no \"xtsfs_kms\" protocol version".into(),
        }),
    }
}

/// Reads a pipe to its end on a thread of its own, keeping at most `limit` + 1 bytes and
/// discarding the rest, so that a chatty program never blocks on a full pipe.
fn read_in_background(
    pipe: Option<impl Read + Send + 'static>,
    limit: usize,
) -> mpsc::Receiver<std::io::Result<Zeroizing<Vec<u8>>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Sized for the largest accepted reply, so reading never reallocates.
        let mut buffer = Zeroizing::new(Vec::with_capacity(limit + 1));
        let result = match pipe {
            Some(mut pipe) => (&mut pipe)
                .take(limit as u64 + 1)
                .read_to_end(&mut buffer)
                .and_then(|_| std::io::copy(&mut pipe, &mut std::io::sink()))
                .map(|_| buffer),
            None => Ok(buffer),
        };
        let _ = tx.send(result);
    });
    rx
}

/// The process groups of the key programs running now. A program outlives the daemon
/// that started it unless killed: an unmount does not wait for a key check stuck in a
/// program, and exiting ends only the checks that run inside the daemon (PKCS#11), so
/// the daemon kills these on its way out ([`kill_running_programs`]).
static RUNNING: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

/// A program's entry in [`RUNNING`] while [`CommandProvider::run`] waits for it.
struct RunningGroup(libc::pid_t);

impl RunningGroup {
    fn register(group: libc::pid_t) -> Self {
        RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(group);
        RunningGroup(group)
    }
}

impl Drop for RunningGroup {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|&group| group != self.0);
    }
}

/// Kills every key program still running, with whatever it started. For a daemon about
/// to exit.
pub fn kill_running_programs() {
    let running = std::mem::take(&mut *RUNNING.lock().unwrap_or_else(PoisonError::into_inner));
    for group in running {
        kill_group(group);
    }
}

fn kill_group(group: libc::pid_t) {
    // SAFETY: kill has no memory-safety preconditions; a negative pid names the group the
    // program leads (it was spawned with process_group(0)).
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let start = text
        .char_indices()
        .rev()
        .nth(MAX_QUOTED_LEN)
        .map_or(0, |(i, _)| i);
    format!("; it said: {}", quote(&text[start..]))
}

/// The program's words, made safe to print: no control characters (terminal escapes), and
/// at most [`MAX_QUOTED_LEN`] characters.
fn quote(text: &str) -> String {
    text.chars()
        .take(MAX_QUOTED_LEN)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn program_name(program: &Path) -> String {
    format!("KMS command '{}'", program.display())
}

fn timeout_from_env() -> Result<Duration, KeyError> {
    let Some(value) = std::env::var_os(TIMEOUT_ENV) else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let text = value.to_string_lossy();
    text.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .or_else(|_| humantime::parse_duration(text.trim()))
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| KeyError::Config(format!(
            "{TIMEOUT_ENV}='{text}' is not a time limit (give seconds, e.g. 60, or a duration such as 90s or 2m)"
        )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_one_json_line_with_null_for_the_newest_version() {
        let request = encode_request(&Request {
            xtsfs_kms: PROTOCOL_VERSION,
            op: Op::Check,
            key_version: None,
            plaintext: None,
            ciphertext: None,
        })
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&request).unwrap(),
            "{\"xtsfs_kms\":1,\"op\":\"check\",\"key_version\":null}\n"
        );
    }

    #[test]
    fn encoding_a_request_never_reallocates() {
        let plaintext = "A".repeat(88);
        let version = "\u{1}".repeat(40);
        let request = Request {
            xtsfs_kms: PROTOCOL_VERSION,
            op: Op::Wrap,
            key_version: Some(&version),
            plaintext: Some(&plaintext),
            ciphertext: None,
        };
        let encoded = encode_request(&request).unwrap();
        assert!(encoded.len() <= encoded.capacity());
        assert!(encoded.capacity() == 256 + (88 + 40) * 6);
    }

    #[test]
    fn malformed_replies_never_quote_the_reply() {
        let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA==";
        for reply in [
            format!("{{\"xtsfs_kms\":1,\"ok\":\"{secret}\"}}"),
            format!("{{\"xtsfs_kms\":1,\"ok\":true,\"plaintext\":{secret}}}"),
            format!("not json {secret}"),
        ] {
            let Err(error) = parse_reply(reply.as_bytes(), Path::new("/kms")) else {
                panic!("accepted {reply}");
            };
            let text = error.to_string();
            assert!(matches!(error, KeyError::Protocol { .. }), "{text}");
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn protocol_version_is_checked_before_the_fields() {
        let Err(error) = parse_reply(br#"{"xtsfs_kms":2,"ok":"different"}"#, Path::new("/kms"))
        else {
            panic!("accepted version 2");
        };
        assert!(error.to_string().contains("protocol version 2"), "{error}");
    }

    #[test]
    fn quoting_strips_terminal_escapes_and_long_text() {
        assert_eq!(quote("a\u{1b}[31mb\n"), "a [31mb ");
        assert_eq!(quote(&"x".repeat(1000)).len(), MAX_QUOTED_LEN);
        assert_eq!(stderr_tail(b"  \n"), "");
        assert_eq!(
            stderr_tail(b"az: not logged in\n"),
            "; it said: az: not logged in"
        );
    }
}
