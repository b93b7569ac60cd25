//! Redis end to end on a real redis-server: AOF (multi-part, appendfsync always) and RDB
//! land encrypted, and both bring every key back after a remount.

mod common;

use common::mount::find_plaintext;
use common::redis::{Client, RedisServer, Reply};
use common::TestEnv;

const CANARY: &str = "xtsfs-redis-canary-7f3a";
const KEYS: usize = 10_000;

fn status(text: &str) -> Reply {
    Reply::Status(text.into())
}

/// Waits (bounded) until INFO persistence says `field:value`.
fn wait_until(redis: &mut Client, field: &str, value: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while redis.info_field(field) != value {
        assert!(
            std::time::Instant::now() < deadline,
            "{field} never became {value}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn assert_all_keys(redis: &mut Client) {
    assert_eq!(redis.must(&["DBSIZE"]), Reply::Int(KEYS as i64));
    for i in 0..KEYS {
        redis.send(&["GET", &format!("key:{i}")]).unwrap();
    }
    for i in 0..KEYS {
        assert_eq!(
            redis.reply().unwrap(),
            Reply::Bulk(Some(value(i).into_bytes())),
            "key:{i}"
        );
    }
}

fn value(i: usize) -> String {
    format!("{CANARY}-value-{i}-{}", "x".repeat(i % 97))
}

#[test]
fn redis_aof_and_rdb_land_encrypted_and_reload_after_remount() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);

    let server = RedisServer::start(&env, &m.mountpoint, "redis");
    let mut redis = server.client();
    for i in 0..KEYS {
        redis
            .send(&["SET", &format!("key:{i}"), &value(i)])
            .unwrap();
    }
    for i in 0..KEYS {
        assert_eq!(redis.reply().unwrap(), status("OK"), "SET key:{i}");
    }
    assert_eq!(redis.must(&["BGSAVE"]), status("Background saving started"));
    wait_until(&mut redis, "rdb_bgsave_in_progress", "0");
    assert_eq!(redis.info_field("rdb_last_bgsave_status"), "ok");
    assert!(matches!(
        redis.must(&["BGREWRITEAOF"]),
        Reply::Status(s) if s.starts_with("Background append only file rewriting")
    ));
    wait_until(&mut redis, "aof_rewrite_in_progress", "0");
    assert_eq!(redis.info_field("aof_last_bgrewrite_status"), "ok");
    server.shutdown();

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
    let server = RedisServer::start(&env, &m.mountpoint, "redis-aof");
    assert_all_keys(&mut server.client());
    server.shutdown();

    // ...and once from the RDB alone.
    std::fs::remove_dir_all(m.path("appendonlydir")).unwrap();
    m.remount();
    let server = RedisServer::start_with(&env, &m.mountpoint, "redis-rdb", false);
    assert_all_keys(&mut server.client());
    server.shutdown();
}
