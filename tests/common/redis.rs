//! redis-server for tests: a RESP client, and a server in a process group of its own
//! (so that its AOF rewrite or BGSAVE child dies with it) on a free loopback port.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{path_str, TestEnv};

/// Every wait on a process or a server is bounded by this.
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A command in RESP, as the client sends it and as Redis appends it to the AOF.
pub fn resp(args: &[&str]) -> Vec<u8> {
    let mut buf = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        buf.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
    }
    buf
}

pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.set_write_timeout(Some(WAIT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    pub fn send(&mut self, args: &[&str]) -> io::Result<()> {
        self.writer.write_all(&resp(args))
    }

    pub fn line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by redis-server",
            ));
        }
        match line.strip_suffix("\r\n") {
            Some(line) => Ok(line.to_string()),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("reply cut short: {line:?}"),
            )),
        }
    }

    pub fn reply(&mut self) -> io::Result<Reply> {
        let line = self.line()?;
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {line:?}"));
        let (kind, rest) = line.split_at_checked(1).ok_or_else(|| bad("empty reply"))?;
        let number = || rest.parse::<i64>().map_err(|_| bad("bad number"));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(number()?),
            "$" => match number()? {
                -1 => Reply::Bulk(None),
                len => {
                    let mut body = vec![0; len as usize + 2];
                    self.reader.read_exact(&mut body)?;
                    body.truncate(len as usize);
                    Reply::Bulk(Some(body))
                }
            },
            "*" => match number()? {
                -1 => Reply::Array(None),
                len => Reply::Array(Some(
                    (0..len).map(|_| self.reply()).collect::<io::Result<_>>()?,
                )),
            },
            _ => return Err(bad("unknown reply type")),
        })
    }

    pub fn call(&mut self, args: &[&str]) -> io::Result<Reply> {
        self.send(args)?;
        self.reply()
    }

    /// A command on a server that must answer.
    #[track_caller]
    pub fn must(&mut self, args: &[&str]) -> Reply {
        self.call(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    pub fn info_field(&mut self, field: &str) -> String {
        let Reply::Bulk(Some(info)) = self.must(&["INFO", "persistence"]) else {
            panic!("INFO persistence is not a bulk string");
        };
        String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")).map(str::to_string))
            .unwrap_or_else(|| panic!("INFO persistence has no {field}"))
    }

    /// Waits (bounded) until INFO persistence says `field:value`.
    pub fn wait_for_info(&mut self, field: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.info_field(field) != value {
            assert!(Instant::now() < deadline, "{field} never became {value}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Asserts, pipelined, that `key:{i}` holds `value(i)` for every i below `keys`.
    pub fn assert_keys(&mut self, keys: usize, value: impl Fn(usize) -> String) {
        for i in 0..keys {
            self.send(&["GET", &format!("key:{i}")]).unwrap();
        }
        for i in 0..keys {
            assert_eq!(
                self.reply().unwrap(),
                Reply::Bulk(Some(value(i).into_bytes())),
                "key:{i}"
            );
        }
    }

    pub fn get(&mut self, key: &str) -> Option<Vec<u8>> {
        match self.must(&["GET", key]) {
            Reply::Bulk(value) => value,
            other => panic!("GET {key}: {other:?}"),
        }
    }

    pub fn get_counter(&mut self) -> u64 {
        let value = self.get("counter").expect("the counter exists");
        String::from_utf8(value)
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("the counter is a number")
    }
}

pub struct RedisServer {
    child: Child,
    pub port: u16,
    log: PathBuf,
    /// Reaped: its pid, and so its group id, may belong to another process now.
    reaped: bool,
}

impl RedisServer {
    /// Starts redis-server with `dir` as its data directory (AOF on, fsync on every write,
    /// no RDB snapshots) and waits until it has loaded its data set. It logs to
    /// `name.log` in the test environment, outside the mount.
    pub fn start(env: &TestEnv, dir: &Path, name: &str) -> RedisServer {
        Self::start_with(env, dir, name, true)
    }

    /// As [`RedisServer::start`]; with `appendonly` false the server loads and writes no
    /// AOF, only what dump.rdb holds.
    pub fn start_with(env: &TestEnv, dir: &Path, name: &str, appendonly: bool) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = env.path(&format!("{name}.log"));
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", path_str(dir), "--logfile", path_str(&log)])
            .args(["--appendonly", if appendonly { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        let mut server = RedisServer {
            child,
            port,
            log,
            reaped: false,
        };
        let deadline = Instant::now() + WAIT;
        let mut client = loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("redis-server exited with {status}:\n{}", server.log());
            }
            match Client::connect(port) {
                Ok(client) => break client,
                Err(e) if Instant::now() > deadline => {
                    panic!("redis-server did not come up: {e}\n{}", server.log())
                }
                Err(_) => thread::sleep(Duration::from_millis(10)),
            }
        };
        // A loading server answers -LOADING until the data set is in memory.
        loop {
            match client.call(&["PING"]) {
                Ok(Reply::Status(s)) if s == "PONG" => break,
                reply if Instant::now() > deadline => {
                    panic!("redis-server did not load: {reply:?}\n{}", server.log())
                }
                _ => thread::sleep(Duration::from_millis(10)),
            }
        }
        server
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port).expect("connect to redis-server")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs every process of the server's group (the server and any fork child) and
    /// waits until none is left holding files on the mount. Idempotent.
    pub fn kill(&mut self) -> ExitStatus {
        let group = self.child.id() as i32;
        if !self.reaped {
            // SAFETY: signalling the process group we created, whose leader is unreaped.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
        let status = wait_exit(&mut self.child, WAIT);
        self.reaped = true;
        // The group outlives its leader while a fork child (an AOF rewrite) is dying.
        wait_until_gone("redis-server's process group", || group_alive(group));
        status
    }

    /// A clean SHUTDOWN, which must end the server with status 0.
    pub fn shutdown(mut self) {
        // The server closes the connection instead of answering.
        let _ = self.client().call(&["SHUTDOWN"]);
        let status = wait_exit(&mut self.child, WAIT);
        self.reaped = true;
        assert!(
            status.success(),
            "redis-server exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: signalling the process group we created, whose leader is unreaped.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` to exit, killing it if it has not within `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// State (`R`, `S`, `Z`, ...) and process group of a process, from /proc/PID/stat.
pub fn proc_stat(pid: &str) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(2)?.parse().ok()?,
    ))
}

/// A zombie has closed its files: for the mount it is gone.
pub fn pid_alive(pid: i32) -> bool {
    proc_stat(&pid.to_string()).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

pub fn group_alive(group: i32) -> bool {
    fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.bytes().all(|b| b.is_ascii_digit())
            && proc_stat(&name).is_some_and(|(state, g)| g == group && !matches!(state, 'Z' | 'X'))
    })
}

pub fn wait_until_gone(what: &str, alive: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while alive() {
        assert!(
            Instant::now() < deadline,
            "{what} still alive after SIGKILL"
        );
        thread::sleep(Duration::from_millis(5));
    }
}
