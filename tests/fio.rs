//! fio on the mount: sequential and random reads and writes, O_DIRECT, and crc32c
//! verification of everything written.

mod common;

use std::process::Command;

use common::TestEnv;

/// Runs one fio job in `dir` and checks fio's own verdict and its JSON report.
fn fio(dir: &std::path::Path, name: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new("fio")
        .arg(format!("--name={name}"))
        .arg(format!("--directory={}", dir.display()))
        .args([
            "--ioengine=psync",
            "--output-format=json",
            "--group_reporting",
            // Verification state files would land in the working directory.
            "--verify_state_save=0",
        ])
        .args(args)
        .output()
        .expect("run fio (apt-get install fio)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "fio {name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // fio may print warnings before the JSON object.
    let json = &stdout[stdout.find('{').expect("fio JSON output")..];
    let report: serde_json::Value = serde_json::from_str(json).expect("parse fio JSON");
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "fio {name} reported an error: {job}");
    report
}

fn bytes(report: &serde_json::Value, direction: &str) -> u64 {
    report["jobs"][0][direction]["io_bytes"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn fio_sequential_and_random_io_with_verify() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let dir = m.path("fio");
    std::fs::create_dir(&dir).unwrap();

    let seq_write = fio(
        &dir,
        "seqwrite",
        &[
            "--rw=write",
            "--bs=1M",
            "--size=48M",
            "--end_fsync=1",
            "--verify=crc32c",
        ],
    );
    assert_eq!(bytes(&seq_write, "write"), 48 << 20);
    let seq_read = fio(&dir, "seqwrite", &["--rw=read", "--bs=1M", "--size=48M"]);
    assert_eq!(bytes(&seq_read, "read"), 48 << 20);

    let rand_write = fio(
        &dir,
        "randwrite",
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--size=16M",
            "--verify=crc32c",
            "--fdatasync=32",
        ],
    );
    assert_eq!(bytes(&rand_write, "write"), 16 << 20);
    let rand_read = fio(
        &dir,
        "randwrite",
        &["--rw=randread", "--bs=4k", "--size=16M"],
    );
    assert_eq!(bytes(&rand_read, "read"), 16 << 20);

    // Unaligned block sizes exercise read-modify-write of partial units.
    let odd = fio(
        &dir,
        "oddsizes",
        &[
            "--rw=randwrite",
            "--bsrange=512-12k",
            "--size=8M",
            "--verify=crc32c",
        ],
    );
    assert!(bytes(&odd, "write") > 0);
}

#[test]
fn fio_direct_io_with_verify() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let dir = m.path("direct");
    std::fs::create_dir(&dir).unwrap();

    let write = fio(
        &dir,
        "direct",
        &[
            "--rw=randwrite",
            "--bs=4k",
            "--size=16M",
            "--direct=1",
            "--verify=crc32c",
        ],
    );
    assert_eq!(bytes(&write, "write"), 16 << 20);
    let read = fio(
        &dir,
        "direct",
        &["--rw=read", "--bs=128k", "--size=16M", "--direct=1"],
    );
    assert_eq!(bytes(&read, "read"), 16 << 20);
    let append = fio(
        &dir,
        "appendsync",
        &[
            "--rw=write",
            "--bs=4k",
            "--size=4M",
            "--fdatasync=1",
            "--direct=1",
            "--verify=crc32c",
        ],
    );
    assert_eq!(bytes(&append, "write"), 4 << 20);
}
