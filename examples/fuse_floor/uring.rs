//! The floor over FUSE-over-io_uring (Linux 6.14+, with the `fuse` module's `enable_uring`
//! on). The kernel keeps one queue per possible CPU and puts each request on the queue of
//! the CPU its caller runs on; here each queue is served by a thread pinned to that CPU,
//! so a request is answered on the caller's own CPU, without waking another.
//!
//! Layouts are those of include/uapi/linux/fuse.h (protocol 7.42+).

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{Errno, FileAttr, FileType};
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::{Floor, TTL};

/// `struct fuse_uring_req_header`: the in/out header, the operation's own header, and
/// `struct fuse_uring_ent_in_out`.
const HEADER_LEN: usize = 288;
const OP_IN: usize = 128;
const COMMIT_ID: usize = 256 + 8;
const PAYLOAD_SZ: usize = 256 + 16;
/// The kernel requires room for its largest request: max_write, which xtsfs sets to 1 MiB.
const PAYLOAD_LEN: usize = 1 << 20;
/// Entries per queue: readahead sends a few requests at once.
const DEPTH: usize = 4;
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// One registered entry: the kernel writes each request into these buffers, which must
/// stay where they are for the life of the connection.
struct RingEntry {
    header: Box<[u8; HEADER_LEN]>,
    payload: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
}

impl RingEntry {
    fn new() -> Self {
        let mut header = Box::new([0u8; HEADER_LEN]);
        let mut payload = vec![0u8; PAYLOAD_LEN].into_boxed_slice();
        let iov = Box::new([
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: HEADER_LEN,
            },
            libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: PAYLOAD_LEN,
            },
        ]);
        RingEntry {
            header,
            payload,
            iov,
        }
    }
}

/// Starts one pinned thread per queue. The kernel holds every request until each queue
/// has an entry, so a queue that fails would hang the mount: the process exits instead.
pub fn start(floor: Arc<Floor>, device: Arc<OwnedFd>, sched_idle: bool) -> io::Result<()> {
    for qid in 0..possible_cpus()? {
        let (floor, device) = (floor.clone(), device.clone());
        std::thread::Builder::new()
            .name(format!("uring-{qid}"))
            .spawn(move || {
                if let Err(e) = serve_queue(&floor, &device, qid, sched_idle) {
                    eprintln!("fuse_floor: io_uring queue {qid}: {e}");
                    std::process::exit(1);
                }
            })?;
    }
    Ok(())
}

/// The kernel makes a queue for every possible CPU, online or not.
fn possible_cpus() -> io::Result<u16> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let last = text
        .trim()
        .rsplit(['-', ','])
        .next()
        .and_then(|n| n.parse::<u16>().ok())
        .ok_or_else(|| io::Error::other(format!("cannot parse possible CPUs '{text}'")))?;
    Ok(last + 1)
}

fn pin_to_cpu(cpu: u16) {
    // SAFETY: cpu_set_t is plain data, only read by the call.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu.into(), &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    };
    // A possible CPU may be offline; its queue is still served, from anywhere.
    if !pinned {
        let e = io::Error::last_os_error();
        eprintln!("fuse_floor: io_uring queue {cpu} runs unpinned: {e}");
    }
}

/// A CPU running only SCHED_IDLE threads counts as idle when the scheduler places a woken
/// caller, so the caller stays on this CPU (step 14).
fn set_sched_idle() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: only reads `param`.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn serve_queue(floor: &Floor, device: &OwnedFd, qid: u16, sched_idle: bool) -> io::Result<()> {
    pin_to_cpu(qid);
    if sched_idle {
        set_sched_idle()?;
    }
    let fd = device.as_raw_fd();
    // The kernel keeps writing into registered buffers until the connection ends, which
    // may be after this thread has returned: they are never freed.
    let entries: &'static mut [RingEntry] =
        Vec::leak((0..DEPTH).map(|_| RingEntry::new()).collect());
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> =
        IoUring::builder().build((2 * DEPTH) as u32)?;
    for (index, entry) in entries.iter().enumerate() {
        push(&mut ring, register(fd, qid, &entry.iov, index))?;
    }
    let mut completed = Vec::with_capacity(2 * DEPTH);
    loop {
        ring.submit_and_wait(1)?;
        completed.clear();
        completed.extend(
            ring.completion()
                .map(|cqe| (cqe.user_data() as usize, cqe.result())),
        );
        for &(index, result) in &completed {
            let entry = &mut entries[index];
            match -result {
                0 => {}
                // The handshake reply has not reached the kernel yet.
                libc::EAGAIN => {
                    push(&mut ring, register(fd, qid, &entry.iov, index))?;
                    continue;
                }
                // Unmounted.
                libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED => return Ok(()),
                errno => return Err(io::Error::from_raw_os_error(errno)),
            }
            let commit_id = get_u64(&entry.header[..], COMMIT_ID);
            let in_len = get_u32(&entry.header[..], PAYLOAD_SZ) as usize;
            let (error, out_len) = match serve(floor, &entry.header[..], &mut entry.payload, in_len)
            {
                Ok(out_len) => (0, out_len),
                Err(e) => (-i32::from(e), 0),
            };
            // struct fuse_out_header over the request's fuse_in_header: len (which the
            // kernel ignores here), error, and unique, already in place at byte 8. The
            // reply's arguments are in the payload, and payload_sz says how long they are.
            put_u32(&mut entry.header[..], 0, (16 + out_len) as u32);
            put_u32(&mut entry.header[..], 4, error as u32);
            put_u32(&mut entry.header[..], PAYLOAD_SZ, out_len as u32);
            push(&mut ring, commit_and_fetch(fd, qid, commit_id, index))?;
        }
    }
}

fn push(
    ring: &mut IoUring<squeue::Entry128, cqueue::Entry>,
    sqe: squeue::Entry128,
) -> io::Result<()> {
    // SAFETY: the buffers an SQE points to (an entry's iovecs) are never freed.
    unsafe { ring.submission().push(&sqe) }.map_err(|_| io::Error::other("submission queue full"))
}

fn register(fd: i32, qid: u16, iov: &[libc::iovec; 2], index: usize) -> squeue::Entry128 {
    uring_cmd(fd, CMD_REGISTER, qid, 0, Some(iov), index)
}

fn commit_and_fetch(fd: i32, qid: u16, commit_id: u64, index: usize) -> squeue::Entry128 {
    uring_cmd(fd, CMD_COMMIT_AND_FETCH, qid, commit_id, None, index)
}

/// An IORING_OP_URING_CMD on the FUSE device carrying `struct fuse_uring_cmd_req`
/// (flags, commit_id, qid) in its command area.
fn uring_cmd(
    fd: i32,
    cmd_op: u32,
    qid: u16,
    commit_id: u64,
    iov: Option<&[libc::iovec; 2]>,
    index: usize,
) -> squeue::Entry128 {
    let mut cmd = [0u8; 80];
    cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    cmd[16..18].copy_from_slice(&qid.to_ne_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .addr(iov.map(|iov| iov.as_ptr() as u64))
        .build()
        .user_data(index as u64);
    // The io-uring crate has no setter for sqe->len, which REGISTER needs as the number
    // of iovecs. SAFETY: Entry128 is repr(C): the kernel's 64-byte io_uring_sqe (len at
    // bytes 24..28) and the 64 bytes after it, all plain data; transmute checks the size.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    let iov_count: u32 = if iov.is_some() { 2 } else { 0 };
    raw[24..28].copy_from_slice(&iov_count.to_ne_bytes());
    // SAFETY: back to the Entry128 the bytes came from, with only the plain-data len
    // field changed.
    unsafe { std::mem::transmute(raw) }
}

/// Serves one request: its `fuse_in_header` is at the start of `header`, its first
/// argument at OP_IN, the rest in `payload`. Writes the reply's arguments to `payload`
/// and returns their length.
fn serve(floor: &Floor, header: &[u8], payload: &mut [u8], in_len: usize) -> Result<usize, Errno> {
    let opcode = get_u32(header, 4);
    let ino = get_u64(header, 16);
    let op = &header[OP_IN..OP_IN + 128];
    let name = || {
        let bytes = &payload[..in_len.min(payload.len())];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        OsStr::from_bytes(&bytes[..end]).to_owned()
    };
    match opcode {
        FUSE_LOOKUP => Ok(entry_out(payload, &floor.lookup(ino, &name())?)),
        FUSE_GETATTR => Ok(attr_out(payload, &floor.attr_of(ino)?)),
        FUSE_SETATTR => {
            let size = (get_u32(op, 0) & FATTR_SIZE != 0).then(|| get_u64(op, 16));
            Ok(attr_out(payload, &floor.set_size(ino, size)?))
        }
        FUSE_CREATE => {
            let len = entry_out(payload, &floor.create(ino, &name())?);
            payload[len..len + 16].fill(0); // struct fuse_open_out: fh 0, no flags
            Ok(len + 16)
        }
        FUSE_UNLINK => floor.unlink(&name()).map(|()| 0),
        FUSE_OPEN | FUSE_OPENDIR => {
            payload[..16].fill(0);
            Ok(16)
        }
        FUSE_READ => {
            let zeros = floor.read(ino, get_u64(op, 8), get_u32(op, 16));
            payload[..zeros.len()].copy_from_slice(zeros);
            Ok(zeros.len())
        }
        FUSE_WRITE => {
            let written = floor.write(ino, get_u64(op, 8), get_u32(op, 16));
            // struct fuse_write_out: size, padding.
            put_u32(payload, 0, written);
            put_u32(payload, 4, 0);
            Ok(8)
        }
        FUSE_STATFS => {
            // struct fuse_statfs_out, as fuser answers it by default: bsize 512, namelen 255.
            payload[..80].fill(0);
            put_u32(payload, 40, 512);
            put_u32(payload, 44, 255);
            Ok(80)
        }
        FUSE_RELEASE | FUSE_FSYNC | FUSE_FLUSH | FUSE_RELEASEDIR => Ok(0),
        _ => Err(Errno::ENOSYS),
    }
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_UNLINK: u32 = 10;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_FLUSH: u32 = 25;
const FUSE_OPENDIR: u32 = 27;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_CREATE: u32 = 35;
const FATTR_SIZE: u32 = 1 << 3;

/// `struct fuse_entry_out` (128 bytes); returns its length.
fn entry_out(out: &mut [u8], attr: &FileAttr) -> usize {
    out[..40].fill(0);
    put_u64(out, 0, attr.ino.0);
    put_u64(out, 16, TTL.as_secs()); // entry_valid
    put_u64(out, 24, TTL.as_secs()); // attr_valid
    fuse_attr(&mut out[40..], attr);
    128
}

/// `struct fuse_attr_out` (104 bytes); returns its length.
fn attr_out(out: &mut [u8], attr: &FileAttr) -> usize {
    out[..16].fill(0);
    put_u64(out, 0, TTL.as_secs());
    fuse_attr(&mut out[16..], attr);
    104
}

/// `struct fuse_attr` (88 bytes); the floor's times are all zero.
fn fuse_attr(out: &mut [u8], attr: &FileAttr) {
    out[..88].fill(0);
    put_u64(out, 0, attr.ino.0);
    put_u64(out, 8, attr.size);
    put_u64(out, 16, attr.blocks);
    let kind = match attr.kind {
        FileType::Directory => libc::S_IFDIR,
        _ => libc::S_IFREG,
    };
    put_u32(out, 60, kind | u32::from(attr.perm));
    put_u32(out, 64, attr.nlink);
    put_u32(out, 68, attr.uid);
    put_u32(out, 72, attr.gid);
    put_u32(out, 80, attr.blksize);
}

fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_ne_bytes());
}
