//! The walk of the tree: every name (decrypts, canonical, unique), every long name's
//! side file, every symlink target; regular files are queued for [`super::files`].

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::{
    entry_finding, escape, name_cipher, DirInfo, FileJob, Finding, FsckEvent, Kind, Run, Severity,
};
use crate::crypto::names::{
    long_name_entry_of, long_name_side_file, BackingEntry, BackingName, NameCipher,
    LONG_NAME_PREFIX, LONG_NAME_SIDE_MAX,
};
use crate::error::Error;
use crate::fs::backing;

/// How many entries the walk reports at once.
const SCAN_REPORT: u64 = 1024;
/// Below this many entries a directory's names are decrypted by one thread.
const PARALLEL_NAMES: usize = 64;

/// What a backing name turned out to be.
enum NameOutcome {
    /// A direct name, decrypted.
    Named(OsString),
    /// A direct name that decrypts but is not stored as its plaintext encrypts.
    NonCanonical(OsString, String),
    /// A long name, decrypted from its side file.
    Long(OsString),
    /// A long name whose side file is bad.
    BadSide {
        side: OsString,
        why: String,
    },
    /// A long name without a side file.
    MissingSide(OsString),
    Undecryptable(String),
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `f` over `items` on every core, results in order; each thread gets its own state
/// from `init`.
fn par_map<T: Sync, R: Send, S>(
    items: &[T],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&S, &T) -> R + Sync,
) -> Vec<R> {
    let threads = cores();
    if items.len() < PARALLEL_NAMES || threads == 1 {
        let state = init();
        return items.iter().map(|item| f(&state, item)).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| {
                s.spawn(|| {
                    let state = init();
                    c.iter().map(|item| f(&state, item)).collect::<Vec<R>>()
                })
            })
            .collect();
        handles
            .into_iter()
            // A thread's panic goes on in this one, as the scope would raise it.
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

impl Run<'_> {
    fn scanned(&mut self, progress: &mut dyn FnMut(FsckEvent)) {
        self.scanned += 1;
        if self.scanned == SCAN_REPORT {
            progress(FsckEvent::Scanned {
                entries: self.scanned,
            });
            self.scanned = 0;
        }
    }

    /// Walks the tree: names, side files, symlinks; queues regular files.
    pub(super) fn walk(
        &mut self,
        tree: BorrowedFd<'_>,
        progress: &mut dyn FnMut(FsckEvent),
    ) -> Result<(), Error> {
        let mut pending = vec![0];
        while let Some(dir_index) = pending.pop() {
            self.report.directories += 1;
            let dir_path = self.tree_path.join(&self.dirs[dir_index].relative);
            let listed = backing::open_dir_in(tree, &self.dirs[dir_index].relative)
                .and_then(|dir| Ok((backing::read_dir(dir.as_fd())?, dir)));
            let (entries, dir) = match listed {
                Ok(listed) => listed,
                Err(e) => {
                    let plaintext = self.dirs[dir_index].plaintext.clone();
                    self.findings.push(Finding {
                        severity: Severity::Problem,
                        kind: Kind::ReadError,
                        backing_path: dir_path,
                        plaintext_path: plaintext,
                        plaintext_dir: None,
                        detail: format!("the directory cannot be listed: {e}"),
                        repaired: None,
                        target: None,
                    });
                    continue;
                }
            };
            // Long names' side files (with their d_type), and the rest.
            let mut side_files: HashMap<OsString, u8> = HashMap::new();
            let mut others = Vec::with_capacity(entries.len());
            for backing::RawDirEntry { name, d_type, .. } in entries {
                match self.names.classify(&name) {
                    Ok(BackingEntry::Internal) => {
                        side_files.insert(name, d_type);
                    }
                    _ => others.push((name, d_type)),
                }
            }
            let outcomes = {
                let (dir, volume) = (dir.as_fd(), self.volume);
                // The volume's SIV instance is one, behind a lock: a cipher per thread.
                par_map(
                    &others,
                    || name_cipher(volume),
                    |names, (name, _)| decode_name(names, dir, name, &side_files),
                )
            };
            let mut used_side_files: HashSet<OsString> = HashSet::new();
            // Plaintext names seen in this directory, with their backing names.
            let mut seen: HashMap<OsString, OsString> = HashMap::with_capacity(others.len());
            for ((name, d_type), outcome) in others.into_iter().zip(outcomes) {
                self.scanned(progress);
                let plain = self.record_name(dir_index, &name, outcome, &mut used_side_files);
                if let Some(plain) = &plain {
                    if let Some(first) = seen.get(plain) {
                        let detail = format!(
                            "decrypts to the same name as {}: the mount shows only one of them",
                            escape(&dir_path.join(first))
                        );
                        self.finding(Kind::DuplicateName, dir_index, &name, Some(plain), detail);
                    } else {
                        seen.insert(plain.clone(), name.clone());
                    }
                }
                let kind = match d_type {
                    libc::DT_UNKNOWN => match backing::stat_at(dir.as_fd(), &name) {
                        Ok(st) => mode_to_dtype(st.st_mode),
                        Err(e) => {
                            let detail = format!("cannot stat: {e}");
                            self.finding(
                                Kind::ReadError,
                                dir_index,
                                &name,
                                plain.as_deref(),
                                detail,
                            );
                            continue;
                        }
                    },
                    d_type => d_type,
                };
                match kind {
                    libc::DT_DIR => match plain {
                        Some(plain) => {
                            let parent = &self.dirs[dir_index];
                            let info = DirInfo {
                                relative: parent.relative.join(&name),
                                plaintext: parent.plaintext.as_ref().map(|p| p.join(&plain)),
                            };
                            self.dirs.push(info);
                            pending.push(self.dirs.len() - 1);
                        }
                        // Nothing in it is reachable through the mount; repair moves it
                        // whole.
                        None => self.report.directories += 1,
                    },
                    // A file whose name does not decrypt is reported as that, once: the
                    // mount does not show it, and repair moves it whole.
                    libc::DT_REG if plain.is_none() => {}
                    libc::DT_REG => {
                        let size = match self.options.contents {
                            true => backing::stat_at(dir.as_fd(), &name)
                                .map_or(0, |st| st.st_size as u64),
                            false => 0,
                        };
                        let plaintext = self.dirs[dir_index]
                            .plaintext
                            .as_ref()
                            .zip(plain.as_ref())
                            .map(|(dir, plain)| dir.join(plain));
                        self.files.push(FileJob {
                            dir: dir_index,
                            name,
                            plaintext,
                            size,
                        });
                    }
                    libc::DT_LNK => {
                        self.report.symlinks += 1;
                        self.check_symlink(dir_index, dir.as_fd(), &name, plain.as_deref());
                    }
                    _ => self.report.special += 1,
                }
            }
            let mut orphans: Vec<OsString> = side_files
                .into_keys()
                .filter(|side| !used_side_files.contains(side))
                .collect();
            orphans.sort();
            for side in orphans {
                let entry = long_name_entry_of(&side).unwrap_or(&side);
                let detail = format!(
                    "a long name's side file without its entry {}: it holds only the \
                     encrypted name of an entry that is gone",
                    String::from_utf8_lossy(entry.as_bytes())
                );
                self.finding(Kind::OrphanSideFile, dir_index, &side, None, detail);
            }
        }
        if self.scanned > 0 {
            progress(FsckEvent::Scanned {
                entries: self.scanned,
            });
            self.scanned = 0;
        }
        Ok(())
    }

    /// Records what is wrong with a name; its plaintext, if it has one. Notes the side
    /// file a long name uses.
    fn record_name(
        &mut self,
        dir: usize,
        name: &OsStr,
        outcome: NameOutcome,
        used_side_files: &mut HashSet<OsString>,
    ) -> Option<OsString> {
        match outcome {
            NameOutcome::Named(plain) => Some(plain),
            NameOutcome::NonCanonical(plain, detail) => {
                self.finding(Kind::NonCanonicalName, dir, name, Some(&plain), detail);
                Some(plain)
            }
            NameOutcome::Long(plain) => {
                used_side_files.insert(long_name_side_file(name));
                Some(plain)
            }
            NameOutcome::BadSide { side, why } => {
                let detail = format!(
                    "the long name's side file {} is bad: {why}; its name is lost",
                    side.to_string_lossy()
                );
                used_side_files.insert(side.clone());
                let mut finding = entry_finding(
                    &self.tree_path,
                    &self.dirs,
                    Kind::BadSideFile,
                    dir,
                    name,
                    None,
                    detail,
                );
                if let Some(target) = &mut finding.target {
                    target.side_file = Some(side);
                }
                self.findings.push(finding);
                None
            }
            NameOutcome::MissingSide(side) => {
                let detail = format!(
                    "a long name without its side file {}: its name is lost",
                    side.to_string_lossy()
                );
                self.finding(Kind::MissingSideFile, dir, name, None, detail);
                None
            }
            NameOutcome::Undecryptable(detail) => {
                self.finding(Kind::UndecryptableName, dir, name, None, detail);
                None
            }
        }
    }

    fn check_symlink(
        &mut self,
        dir_index: usize,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        plain: Option<&OsStr>,
    ) {
        let problem = match backing::readlink_at(dir, name) {
            Ok(target) => match self.names.decrypt_target(&target) {
                Ok(_) => return,
                Err(e) => (Kind::UndecryptableSymlink, format!("its target: {e}")),
            },
            Err(e) => (Kind::ReadError, format!("cannot read the symlink: {e}")),
        };
        self.finding(problem.0, dir_index, name, plain, problem.1);
    }
}

/// What backing name `name` in `dir` is; `side_files` are the directory's.
fn decode_name(
    names: &NameCipher,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    side_files: &HashMap<OsString, u8>,
) -> NameOutcome {
    match names.classify(name) {
        Ok(BackingEntry::Named(plain)) => {
            if !names.is_encrypted() {
                return NameOutcome::Named(plain);
            }
            match names.encrypt_name(&plain) {
                Ok(BackingName::Direct(stored)) if stored == name => NameOutcome::Named(plain),
                Ok(canonical) => {
                    let detail = format!(
                        "decrypts, but its name is stored as {} (the mount cannot look it \
                         up)",
                        String::from_utf8_lossy(canonical.entry().as_bytes())
                    );
                    NameOutcome::NonCanonical(plain, detail)
                }
                Err(e) => {
                    let detail = format!("decrypts to a name the mount refuses: {e}");
                    NameOutcome::NonCanonical(plain, detail)
                }
            }
        }
        Ok(BackingEntry::Long) => {
            let side = long_name_side_file(name);
            let Some(d_type) = side_files.get(&side) else {
                return NameOutcome::MissingSide(side);
            };
            let result = match *d_type {
                libc::DT_REG | libc::DT_UNKNOWN => read_side_file(dir, &side)
                    .map_err(|e| format!("cannot read it: {e}"))
                    .and_then(|encoded| decode_long(names, name, &encoded)),
                _ => Err("it is not a regular file".to_string()),
            };
            match result {
                Ok(plain) => NameOutcome::Long(plain),
                Err(why) => NameOutcome::BadSide { side, why },
            }
        }
        // Side files are sorted out before.
        Ok(BackingEntry::Internal) => NameOutcome::Undecryptable("a side file".into()),
        Err(e) => NameOutcome::Undecryptable(format!("{e}; the mount does not show it")),
    }
}

/// The name a side file holds for entry `entry`, or why it holds none.
fn decode_long(names: &NameCipher, entry: &OsStr, encoded: &[u8]) -> Result<OsString, String> {
    let hash = URL_SAFE_NO_PAD.encode(Sha256::digest(encoded));
    if entry.as_bytes()[LONG_NAME_PREFIX.len()..] != *hash.as_bytes() {
        return Err("its contents do not hash to the entry's name".into());
    }
    names
        .decrypt_long(entry, encoded)
        .map_err(|e| format!("its contents do not decrypt ({e})"))
}

fn read_side_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut encoded = Vec::new();
    File::from(backing::open_read(dir, name)?)
        .take(LONG_NAME_SIDE_MAX)
        .read_to_end(&mut encoded)?;
    Ok(encoded)
}

fn mode_to_dtype(mode: libc::mode_t) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFLNK => libc::DT_LNK,
        _ => libc::DT_UNKNOWN,
    }
}
