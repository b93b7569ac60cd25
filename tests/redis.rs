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

fn assert_all_keys(redis: &mut Client) {
    assert_eq!(redis.must(&["DBSIZE"]), Reply::Int(KEYS as i64));
    redis.assert_keys(KEYS, value);
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
    redis.wait_for_info("rdb_bgsave_in_progress", "0");
    assert_eq!(redis.info_field("rdb_last_bgsave_status"), "ok");
    assert!(matches!(
        redis.must(&["BGREWRITEAOF"]),
        Reply::Status(s) if s.starts_with("Background append only file rewriting")
    ));
    redis.wait_for_info("aof_rewrite_in_progress", "0");
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
