//! Known-answer tests of the XTS core (`Xts256`) against published vectors and against
//! independent implementations: xts-mode, and OpenSSL's XTS through Python's
//! `cryptography` package (the `openssl enc` CLI refuses XTS ciphers).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use aes::cipher::{Array, KeyInit};
use aes::Aes256;

use common::{decrypted, encrypted, hex, pseudo_random_bytes, unhex, xts};

/// IEEE P1619/D16 Annex B, vectors 10-14: XTS-AES-256, one 512-byte data unit of bytes
/// 00..ff twice, Key1 = digits of e, Key2 = digits of pi.
struct IeeeVector {
    number: u32,
    unit_index: u64,
    ciphertext: &'static str,
}

const IEEE_KEY: &str = concat!(
    "2718281828459045235360287471352662497757247093699959574966967627",
    "3141592653589793238462643383279502884197169399375105820974944592",
);

const IEEE_VECTORS: &[IeeeVector] = &[
    IeeeVector {
        number: 10,
        unit_index: 0xff,
        ciphertext: concat!(
            "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
            "5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd",
            "5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0",
            "c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca",
            "2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0",
            "b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f",
            "93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec",
            "583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a",
            "84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1",
            "505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae",
            "9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29",
            "a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac",
            "6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f",
            "645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385",
            "1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa",
            "773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
        ),
    },
    IeeeVector {
        number: 11,
        unit_index: 0xffff,
        ciphertext: concat!(
            "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11",
            "e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2",
            "469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d",
            "3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201",
            "3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179",
            "8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a",
            "aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6",
            "9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80",
            "470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a",
            "bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0",
            "18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75",
            "bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63",
            "094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a",
            "7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68",
            "6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090",
            "54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
        ),
    },
    IeeeVector {
        number: 12,
        unit_index: 0xffffff,
        ciphertext: concat!(
            "e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200",
            "a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba049",
            "9298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a8",
            "7815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e1",
            "9110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf",
            "5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e",
            "62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6",
            "e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879",
            "a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe0",
            "97b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964",
            "c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799d",
            "a3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7a",
            "f08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2",
            "480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace",
            "231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36",
            "ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826",
        ),
    },
    IeeeVector {
        number: 13,
        unit_index: 0xffffffff,
        ciphertext: concat!(
            "bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5",
            "520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1",
            "c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac",
            "7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e",
            "919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d3",
            "50875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5",
            "69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed9",
            "0fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c",
            "1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053",
            "027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7",
            "5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df",
            "73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00",
            "77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460",
            "d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155",
            "6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88c",
            "f6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220",
        ),
    },
    IeeeVector {
        number: 14,
        unit_index: 0xffffffffff,
        ciphertext: concat!(
            "64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed23",
            "50eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80",
            "8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604",
            "e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4",
            "a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b",
            "50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434",
            "631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d8",
            "76c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff",
            "3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41b",
            "f6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6",
            "85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa",
            "6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc",
            "e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a",
            "0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546",
            "81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de",
            "6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9",
        ),
    },
];

#[test]
fn ieee_1619_vectors_10_to_14() {
    let key = unhex(IEEE_KEY);
    let plaintext: Vec<u8> = (0..512).map(|i| i as u8).collect();
    for vector in IEEE_VECTORS {
        let expected = unhex(vector.ciphertext);
        assert_eq!(expected.len(), 512);
        let ciphertext = encrypted(&xts(&key), vector.unit_index, &plaintext);
        assert_eq!(
            hex(&ciphertext),
            vector.ciphertext,
            "vector {}",
            vector.number
        );
        assert_eq!(
            decrypted(&xts(&key), vector.unit_index, &expected),
            plaintext,
            "vector {} decrypt",
            vector.number
        );
    }
}

/// XTS-AES-256 vectors with ciphertext stealing, from Brian Gladman's `modes` test values
/// (testvals/xts.6, VEC 30, 31, 36, 45) as carried in BoringSSL's xts_test.cc.
#[test]
fn gladman_aes_256_vectors_with_ciphertext_stealing() {
    let key = unhex(concat!(
        "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0",
        "bfbebdbcbbbab9b8b7b6b5b4b3b2b1b0afaeadacabaaa9a8a7a6a5a4a3a2a1a0",
    ));
    let unit_index = 0x12_3456_789a;
    let vectors = [
        (16, "c30ca8f2ed57307edc87e544867ac888"),
        (17, "7f117752cc598a8b0d81d88af9f9bec8c3"),
        (22, "75e8188bcce59ada939f57de2cb9a489c30ca8f2ed57"),
        (
            31,
            "581ea1fee5516ad432ddebe75fd27c6fc30ca8f2ed57307edc87e544867ac8",
        ),
    ];
    for (len, ciphertext) in vectors {
        let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
        assert_eq!(
            hex(&encrypted(&xts(&key), unit_index, &plaintext)),
            ciphertext,
            "length {len}"
        );
        assert_eq!(
            decrypted(&xts(&key), unit_index, &unhex(ciphertext)),
            plaintext
        );
    }
}

/// Lengths with every partial-block size, at unit indices that exercise all 64 bits of
/// the tweak and the GF(2^128) carry, against xts-mode's block-at-a-time implementation.
#[test]
fn ciphertext_stealing_matches_xts_mode() {
    let unit_indices = [0, 1, 0x8000_0000, 0x1_0000_0007, u64::MAX];
    for (seed, unit_index) in unit_indices.into_iter().enumerate() {
        let key = pseudo_random_bytes(seed as u64, 64);
        let oracle = xts_mode::Xts128::new(
            Aes256::new(&Array::try_from(&key[..32]).unwrap()),
            Aes256::new(&Array::try_from(&key[32..]).unwrap()),
        );
        for len in (17..48).chain([4095 - 16, 4095, 4097, 8191]) {
            let plaintext = pseudo_random_bytes(len as u64, len);
            let mut expected = plaintext.clone();
            oracle.encrypt_sector(
                &mut expected,
                xts_mode::get_tweak_default(unit_index.into()),
            );
            let ciphertext = encrypted(&xts(&key), unit_index, &plaintext);
            assert_eq!(ciphertext, expected, "unit {unit_index}, length {len}");
            assert_eq!(decrypted(&xts(&key), unit_index, &ciphertext), plaintext);
        }
    }
}

/// Runs every (key, unit index, plaintext) through OpenSSL's AES-256-XTS in one Python
/// process and returns the ciphertexts.
fn openssl_xts_encrypt(cases: &[(Vec<u8>, u64, Vec<u8>)]) -> Vec<Vec<u8>> {
    const SCRIPT: &str = "
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
for line in sys.stdin:
    key, tweak, data = (bytes.fromhex(field) for field in line.split())
    enc = Cipher(algorithms.AES(key), modes.XTS(tweak)).encryptor()
    print((enc.update(data) + enc.finalize()).hex())
";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with the cryptography package is needed for the OpenSSL comparison");
    let mut input = String::new();
    for (key, unit_index, plaintext) in cases {
        // The XTS tweak is the unit index as a 16-byte little-endian integer.
        let tweak = u128::from(*unit_index).to_le_bytes();
        input += &format!("{} {} {}\n", hex(key), hex(&tweak), hex(plaintext));
    }
    // Written from another thread: Python answers line by line, and a full output pipe
    // would otherwise stop it reading while this thread is still writing.
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "OpenSSL XTS via python3 failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(unhex)
        .collect()
}

#[test]
fn matches_openssl_for_many_lengths_and_unit_indices() {
    let lengths = [
        16, 17, 31, 32, 33, 100, 511, 512, 513, 1000, 2049, 4095, 4096,
    ];
    let unit_indices = [0, 1, 255, 0x1_0000_0001, u64::MAX];
    let mut cases = Vec::new();
    for (i, len) in lengths.into_iter().enumerate() {
        for (j, unit_index) in unit_indices.into_iter().enumerate() {
            let key = pseudo_random_bytes(1000 + (i * 10 + j) as u64, 64);
            // OpenSSL refuses keys whose halves are equal.
            assert_ne!(key[..32], key[32..]);
            cases.push((key, unit_index, pseudo_random_bytes(len as u64, len)));
        }
    }
    let expected = openssl_xts_encrypt(&cases);
    assert_eq!(expected.len(), cases.len());
    for ((key, unit_index, plaintext), expected) in cases.iter().zip(expected) {
        let ciphertext = encrypted(&xts(key), *unit_index, plaintext);
        assert_eq!(
            ciphertext,
            expected,
            "unit {unit_index}, length {}",
            plaintext.len()
        );
        assert_eq!(&decrypted(&xts(key), *unit_index, &ciphertext), plaintext);
    }
}
