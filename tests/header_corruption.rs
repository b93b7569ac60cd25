//! A damaged volume header never unlocks and never panics: every single-byte corruption,
//! truncation and semantic edit is reported as a header error. Also the file header
//! decoder's checks.

mod common;

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};

use xtsfs::keys::KeyRef;
use xtsfs::volume::file_header::{FileFormat, FileHeader, FileHeaderError, FILE_HEADER_LEN};
use xtsfs::volume::header::VolumeFormat;
use xtsfs::volume::header::{HeaderBody, HeaderError};
use xtsfs::volume::{self, HEADER_FILE};
use xtsfs::Error;

use common::{assert_error, mmk_ref, path_str, pem_ref, stderr, TestEnv};

/// Framing sizes from docs/FORMAT.md: magic, version, body length; then the MAC.
const PREFIX_LEN: usize = 14;
const MAC_LEN: usize = 32;

struct Volume {
    env: TestEnv,
    key: KeyRef,
    header: Vec<u8>,
}

impl Volume {
    fn mmk() -> Self {
        let env = TestEnv::new();
        Self::init(env, mmk_ref("default"))
    }

    fn pem() -> Self {
        let env = TestEnv::new();
        let key = pem_ref(&env.rsa_key("key.pem", 2048));
        Self::init(env, key)
    }

    fn init(env: TestEnv, key: KeyRef) -> Self {
        volume::init(
            &env.backing(),
            &key,
            &env.key_context(),
            true,
            VolumeFormat::LATEST,
        )
        .unwrap();
        let header = fs::read(env.backing().join(HEADER_FILE)).unwrap();
        let volume = Volume { env, key, header };
        volume.unlock().expect("the intact header unlocks");
        volume
    }

    fn header_path(&self) -> std::path::PathBuf {
        self.env.backing().join(HEADER_FILE)
    }

    fn write_header(&self, bytes: &[u8]) {
        fs::write(self.header_path(), bytes).unwrap();
    }

    /// Unlocks with the key the header records, as mount and status do.
    fn unlock(&self) -> Result<volume::UnlockedVolume, Error> {
        volume::unlock(&self.env.backing(), &self.env.key_context(), None)
    }

    /// The header error unlocking the current header file gives; panics on anything else.
    fn header_error(&self, what: &str) -> HeaderError {
        match catch_unwind(AssertUnwindSafe(|| self.unlock())) {
            Err(_) => panic!("{what}: unlock panicked"),
            Ok(Ok(_)) => panic!("{what}: a damaged header unlocked"),
            Ok(Err(Error::Header { source, .. })) => source,
            Ok(Err(other)) => panic!("{what}: expected a header error, got {other:?}"),
        }
    }
}

/// The error a flipped byte at `offset` must give, by the header region it falls in.
fn expected_for_offset(offset: usize, len: usize) -> fn(&HeaderError) -> bool {
    match offset {
        0..8 => |e| matches!(e, HeaderError::BadMagic),
        8..10 => |e| matches!(e, HeaderError::Version(_)),
        10..PREFIX_LEN => |e| matches!(e, HeaderError::Length { .. }),
        // xor 0xff turns any ASCII byte of the JSON body into invalid UTF-8.
        o if o < len - MAC_LEN => |e| matches!(e, HeaderError::Body(_)),
        _ => |e| matches!(e, HeaderError::Mac),
    }
}

fn flip_every_byte(volume: &Volume) {
    let len = volume.header.len();
    for offset in 0..len {
        let mut damaged = volume.header.clone();
        damaged[offset] ^= 0xff;
        volume.write_header(&damaged);
        let error = volume.header_error(&format!("byte {offset} of {len} flipped"));
        assert!(
            expected_for_offset(offset, len)(&error),
            "byte {offset} of {len} flipped: {error:?}"
        );
    }
    volume.write_header(&volume.header);
    assert!(volume.unlock().is_ok());
}

#[test]
fn every_flipped_byte_of_an_mmk_header_is_a_header_error() {
    flip_every_byte(&Volume::mmk());
}

#[test]
fn every_flipped_byte_of_a_pem_header_is_a_header_error() {
    flip_every_byte(&Volume::pem());
}

#[test]
fn cli_reports_flipped_bytes_as_volume_errors() {
    let volume = Volume::mmk();
    let backing = path_str(&volume.env.backing()).to_owned();
    let len = volume.header.len();
    let offsets =
        (0..len)
            .step_by(97)
            .chain([9, 12, PREFIX_LEN, len - MAC_LEN - 2, len - MAC_LEN, len - 1]);
    for offset in offsets {
        let mut damaged = volume.header.clone();
        damaged[offset] ^= 0xff;
        volume.write_header(&damaged);

        let status = volume.env.xtsfs(&["status", &backing]);
        assert_error(&status, 4);
        assert!(stderr(&status).starts_with("xtsfs: error:"));

        let rewrap = volume
            .env
            .xtsfs(&["rewrap", &backing, "--key", "mmk:other"]);
        assert_error(&rewrap, 4);
        assert_eq!(
            fs::read(volume.header_path()).unwrap(),
            damaged,
            "a failed rewrap leaves the header as it was"
        );
    }
}

#[test]
fn truncated_and_extended_headers_are_header_errors() {
    let volume = Volume::mmk();
    let len = volume.header.len();
    for cut in [0, 1, 8, 13, PREFIX_LEN, PREFIX_LEN + MAC_LEN - 1] {
        volume.write_header(&volume.header[..cut]);
        assert_eq!(
            volume.header_error(&format!("cut to {cut}")),
            HeaderError::Truncated(cut)
        );
    }
    for cut in [PREFIX_LEN + MAC_LEN, len / 2, len - MAC_LEN, len - 1] {
        volume.write_header(&volume.header[..cut]);
        assert!(matches!(
            volume.header_error(&format!("cut to {cut}")),
            HeaderError::Length { .. }
        ));
    }
    volume.write_header(&[&volume.header[..], b"\n"].concat());
    assert!(matches!(
        volume.header_error("one byte appended"),
        HeaderError::Length { .. }
    ));
}

#[test]
fn missing_header_is_not_a_volume() {
    let volume = Volume::mmk();
    fs::remove_file(volume.header_path()).unwrap();
    assert!(matches!(volume.unlock(), Err(Error::NotAVolume(_))));
}

/// Replaces `from` by `to` in the JSON body and rewrites the length field to match.
fn edit_body(header: &[u8], from: &str, to: &str) -> Vec<u8> {
    let body = std::str::from_utf8(&header[PREFIX_LEN..header.len() - MAC_LEN]).unwrap();
    assert_eq!(body.matches(from).count(), 1, "{from} occurs once");
    let body = body.replace(from, to);
    let mut edited = header[..PREFIX_LEN].to_vec();
    edited[10..PREFIX_LEN].copy_from_slice(&(body.len() as u32).to_le_bytes());
    edited.extend_from_slice(body.as_bytes());
    edited.extend_from_slice(&header[header.len() - MAC_LEN..]);
    edited
}

#[test]
fn semantically_valid_edits_fail_the_mac() {
    let volume = Volume::mmk();
    let body: HeaderBody = volume.unlock().unwrap().header;
    let mut new_id = body.volume_id.clone();
    new_id.replace_range(..1, if new_id.starts_with('0') { "1" } else { "0" });
    let edits = [
        // Same length: a different volume id.
        (format!("\"{}\"", body.volume_id), format!("\"{new_id}\"")),
        // A downgrade to plaintext names; the length field is fixed up.
        (
            "\"names\": \"aes-256-siv\"".into(),
            "\"names\": \"plaintext\"".into(),
        ),
        (
            format!("\"created_at\": \"{}\"", body.created_at),
            "\"created_at\": \"2001-01-01T00:00:00Z\"".into(),
        ),
    ];
    for (from, to) in edits {
        let edited = edit_body(&volume.header, &from, &to);
        HeaderBody::decode(&edited).expect("the edited header parses");
        volume.write_header(&edited);
        assert_eq!(volume.header_error(&to), HeaderError::Mac);
    }
}

#[test]
fn header_mac_is_keyed_by_the_volume_key() {
    // Two volumes: a header body moved onto another volume's key fails its MAC even
    // though its wrapped key unwraps (both are wrapped by the same platform key).
    let volume = Volume::mmk();
    let other_backing = volume.env.path("other");
    volume::init(
        &other_backing,
        &volume.key,
        &volume.env.key_context(),
        true,
        VolumeFormat::LATEST,
    )
    .unwrap();
    let other = fs::read(other_backing.join(HEADER_FILE)).unwrap();
    let mut spliced = volume.header[..volume.header.len() - MAC_LEN].to_vec();
    spliced.extend_from_slice(&other[other.len() - MAC_LEN..]);
    volume.write_header(&spliced);
    assert_eq!(volume.header_error("spliced MAC"), HeaderError::Mac);
    assert!(volume::unlock(&other_backing, &volume.env.key_context(), None).is_ok());
}

#[test]
fn file_header_decoding_rejects_damage() {
    let header = FileHeader::generate(FileFormat::V1).unwrap();
    let encoded: [u8; FILE_HEADER_LEN] = header.encode().try_into().unwrap();
    assert_eq!(&encoded[..4], b"XTSF");
    assert_eq!(&encoded[4..6], &1u16.to_le_bytes());
    assert_eq!(&encoded[6..16], &[0u8; 10]);
    assert_eq!(&encoded[16..], &header.nonce);
    assert_eq!(FileHeader::decode(&encoded), Ok(header));
    // Data after the header is not the header's business.
    assert_eq!(
        FileHeader::decode(&[&encoded[..], &[0xaa; 100]].concat()),
        Ok(header)
    );
    assert_ne!(
        FileHeader::generate(FileFormat::V1).unwrap(),
        header,
        "nonces are random"
    );

    for len in [0, 1, 4, 31] {
        assert_eq!(
            FileHeader::decode(&encoded[..len]),
            Err(FileHeaderError::Truncated(len as u64))
        );
    }
    for offset in 0..4 {
        let mut bad = encoded;
        bad[offset] ^= 0x20;
        assert_eq!(FileHeader::decode(&bad), Err(FileHeaderError::BadMagic));
    }
    for version in [0u16, 3, 0x0100, u16::MAX] {
        let mut bad = encoded;
        bad[4..6].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            FileHeader::decode(&bad),
            Err(FileHeaderError::Version(version))
        );
    }
    for offset in 6..16 {
        let mut bad = encoded;
        bad[offset] = 1;
        assert_eq!(FileHeader::decode(&bad), Err(FileHeaderError::Reserved));
    }
}

#[test]
fn format_1_plaintext_length_is_backing_length_minus_the_file_header() {
    let v1 = FileFormat::V1;
    assert_eq!(v1.plaintext_len(0), Some(0));
    for short in [1, 31] {
        assert_eq!(v1.plaintext_len(short), None);
    }
    assert_eq!(v1.plaintext_len(32), Some(0));
    assert_eq!(v1.plaintext_len(32 + 4096 + 5), Some(4101));
}

#[test]
fn format_2_file_header_is_a_page_with_the_key_generation_field() {
    let header = FileHeader::generate(FileFormat::V2).unwrap();
    let encoded = header.encode();
    assert_eq!(encoded.len(), 4096, "data starts on a page boundary");
    assert_eq!(&encoded[..4], b"XTSF");
    assert_eq!(&encoded[4..6], &2u16.to_le_bytes());
    assert_eq!(&encoded[8..12], &0u32.to_le_bytes(), "key generation 0");
    assert_eq!(&encoded[16..32], &header.nonce);
    assert!(encoded[32..].iter().all(|b| *b == 0));
    for offset in [6, 7, 12, 15] {
        let mut bad = encoded.clone();
        bad[offset] = 1;
        assert_eq!(FileHeader::decode(&bad), Err(FileHeaderError::Reserved));
    }
}
