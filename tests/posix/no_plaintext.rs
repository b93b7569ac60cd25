//! No plaintext in the backing directory.

use std::fs;
use std::os::unix::fs::symlink;

use crate::common::mount::find_plaintext;
use crate::common::sys::mkfifo;
use crate::common::TestEnv;
use crate::{data, long_name};

#[test]
fn canary_never_reaches_the_backing_directory() {
    const CANARY: &str = "xtsfs-canary-5b8e1d";
    // Short enough for a file below one AES block, which is encrypted differently.
    const SHORT_CANARY: &str = "tiny-canary";
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let mut notes = data(1, 20_000);
    for offset in [0, 4090, 8191, 19_000] {
        notes[offset..offset + CANARY.len()].copy_from_slice(CANARY.as_bytes());
    }
    fs::write(m.path("notes"), &notes).unwrap();
    fs::write(m.path("exact"), CANARY).unwrap();
    fs::write(m.path("short"), SHORT_CANARY).unwrap();
    fs::write(m.path(CANARY), b"named").unwrap();
    fs::create_dir(m.path(&format!("dir-{CANARY}"))).unwrap();
    fs::write(m.path(&format!("dir-{CANARY}/inner-{CANARY}")), CANARY).unwrap();
    fs::write(m.path(&long_name(CANARY)), CANARY).unwrap();
    fs::create_dir(m.path(&long_name(&format!("dir-{CANARY}")))).unwrap();
    symlink(format!("../{CANARY}/target"), m.path("link")).unwrap();
    symlink(format!("/{CANARY}/").repeat(60), m.path("long-link")).unwrap();
    fs::hard_link(m.path("notes"), m.path(&format!("hard-{CANARY}"))).unwrap();
    mkfifo(&m.path(&format!("fifo-{CANARY}")), 0o600).unwrap();
    fs::write(m.path("renamed"), b"x").unwrap();
    fs::rename(m.path("renamed"), m.path(&format!("renamed-{CANARY}"))).unwrap();
    assert_eq!(fs::read(m.path("short")).unwrap(), SHORT_CANARY.as_bytes());
    m.unmount_settled();

    for canary in [CANARY, SHORT_CANARY] {
        let hits = find_plaintext(&m.backing, canary.as_bytes());
        assert!(hits.is_empty(), "{canary} in plaintext at {hits:?}");
    }
}
