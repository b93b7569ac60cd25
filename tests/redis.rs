//! Redis end to end on a real redis-server: AOF (multi-part, appendfsync always) and RDB
//! land encrypted, and both bring every key back after a remount.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::find_plaintext;
use common::TestEnv;

const CANARY: &str = "xtsfs-redis-canary-7f3a";
const KEYS: usize = 10_000;

struct Redis {
    child: Child,
    conn: BufReader<TcpStream>,
}

impl Redis {
    fn start(dir: &Path, appendonly: bool) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .args([
                "--appendonly",
                if appendonly { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .args([
                "--save",
                "",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match TcpStream::connect(format!("127.0.0.1:{port}")) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("redis-server did not come up: {e}"),
            }
        };
        let mut redis = Redis {
            child,
            conn: BufReader::new(stream),
        };
        // A loading server answers -LOADING until the data set is in memory.
        while redis.command(&["PING"]) != "+PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not finish loading"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn send(&mut self, args: &[&str]) {
        let mut buf = format!("*{}\r\n", args.len());
        for arg in args {
            buf.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.conn.get_mut().write_all(buf.as_bytes()).unwrap();
    }

    /// One reply: simple/error/integer replies as their line, bulk strings as "$" + body.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.conn.read_line(&mut line).unwrap();
        let line = line.trim_end().to_string();
        match line.strip_prefix('$') {
            Some("-1") => "$nil".into(),
            Some(len) => {
                let mut body = vec![0u8; len.parse::<usize>().unwrap() + 2];
                std::io::Read::read_exact(&mut self.conn, &mut body).unwrap();
                format!("${}", String::from_utf8_lossy(&body[..body.len() - 2]))
            }
            None => line,
        }
    }

    fn command(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }

    fn info_field(&mut self, field: &str) -> String {
        let info = self.command(&["INFO", "persistence"]);
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("INFO has no {field}"))
            .to_string()
    }

    fn wait_until(&mut self, field: &str, value: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.info_field(field) != value {
            assert!(Instant::now() < deadline, "{field} never became {value}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn shutdown(mut self) {
        self.send(&["SHUTDOWN"]);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "redis-server exited with {status}");
    }

    fn assert_all_keys(&mut self) {
        assert_eq!(self.command(&["DBSIZE"]), format!(":{KEYS}"));
        for i in 0..KEYS {
            self.send(&["GET", &format!("key:{i}")]);
        }
        for i in 0..KEYS {
            assert_eq!(self.reply(), format!("${}", value(i)), "key:{i}");
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn value(i: usize) -> String {
    format!("{CANARY}-value-{i}-{}", "x".repeat(i % 97))
}

#[test]
fn redis_aof_and_rdb_land_encrypted_and_reload_after_remount() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);

    let mut redis = Redis::start(&m.mountpoint, true);
    for i in 0..KEYS {
        redis.send(&["SET", &format!("key:{i}"), &value(i)]);
    }
    for i in 0..KEYS {
        assert_eq!(redis.reply(), "+OK", "SET key:{i}");
    }
    assert_eq!(redis.command(&["BGSAVE"]), "+Background saving started");
    redis.wait_until("rdb_bgsave_in_progress", "0");
    assert_eq!(redis.info_field("rdb_last_bgsave_status"), "ok");
    assert!(redis
        .command(&["BGREWRITEAOF"])
        .starts_with("+Background append only file rewriting"));
    redis.wait_until("aof_rewrite_in_progress", "0");
    assert_eq!(redis.info_field("aof_last_bgrewrite_status"), "ok");
    redis.shutdown();

    assert!(m.path("dump.rdb").is_file(), "BGSAVE wrote dump.rdb");
    assert!(
        m.path("appendonlydir").is_dir(),
        "Redis 7 multi-part AOF directory"
    );
    m.unmount();
    let leaks = find_plaintext(&m.backing, CANARY.as_bytes());
    assert!(
        leaks.is_empty(),
        "plaintext canary in backing files: {leaks:?}"
    );

    // Once from the AOF...
    m.mount(&[]);
    let mut redis = Redis::start(&m.mountpoint, true);
    redis.assert_all_keys();
    redis.shutdown();

    // ...and once from the RDB alone.
    std::fs::remove_dir_all(m.path("appendonlydir")).unwrap();
    m.remount();
    let mut redis = Redis::start(&m.mountpoint, false);
    redis.assert_all_keys();
    redis.shutdown();
}
