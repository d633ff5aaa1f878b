//! The test vectors of docs/formats.md, checked: a third party can test an
//! implementation against the same bytes.

use super::seal;
use super::wrap::BoxKey;
use super::PrivateKey;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

const SK: &str = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";
const PK: &str = "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c";
const KID: &str = "aaa8fff7";
const VALUE: &str = "dw1.qqj_97VvBHSLtanTMdOelLFs6-51Rz8IfyabI0cRzUhx5WotD8Ie-8JaMpZvdYHo3kP3Tpq5gPj8uMeZEBNdp1lHoWy6PWJ3wiXG9g";
const KEY_ROW: &str = "01c9c604fca935eea91cdacfecfce5e56ce5dfc9692723c51e18dea1a0ba9ee86e56c9a2a3d34c95432375421a3da78828d3952d773fec208c7a4339ebff3b5db7e7ab9cb8887a9238a0cc5a2648ff21d7";
const RECORD: &str = "0100000000070707070707070707070707d06bf43e733e66e3454d60b9cbdaa25692eb8fb5f879da4946d7353dd7e4c788711ff05e5affafd7a0113c49273fe7cf4a4dde110d960f82a9ec3d3a";

fn sk() -> PrivateKey {
    let mut b = zeroize::Zeroizing::new([0u8; 32]);
    b.copy_from_slice(&unhex(SK));
    PrivateKey(b)
}

#[test]
fn the_documented_vectors_open() {
    let sk = sk();
    let pk = seal::public_of(&sk).expect("public");
    assert_eq!(pk.0.to_vec(), unhex(PK));
    assert_eq!(seal::key_id(&pk).to_vec(), unhex(KID));

    let value = seal::open_value(&sk, &pk, VALUE).expect("sealed value");
    assert_eq!(value.as_slice(), br#"{"lat":52.37,"lon":4.89}"#);

    // The data key of device "plug", period 20422 (2025-11-30), key 0.
    let row = unhex(KEY_ROW);
    assert_eq!(row[0], 1);
    let mut aad = b"dwkey1plug\0".to_vec();
    aad.extend_from_slice(&20_422u32.to_be_bytes());
    aad.extend_from_slice(&0u32.to_be_bytes());
    let key = seal::open(&sk, seal::PERIOD_KEY_INFO, &aad, &row[1..]).expect("data key");
    assert_eq!(key.as_slice(), &[0x42; 32]);

    // Record 7 of that period.
    let record = unhex(RECORD);
    assert_eq!((record[0], &record[1..5]), (1, &[0u8, 0, 0, 0][..]));
    let mut raad = b"dwrec1plug\0".to_vec();
    raad.extend_from_slice(&20_422u32.to_be_bytes());
    raad.extend_from_slice(&7u64.to_be_bytes());
    raad.extend_from_slice(&0u32.to_be_bytes());
    let mut sealed = record[5..].to_vec();
    let key: [u8; 32] = key.as_slice().try_into().expect("32 bytes");
    let plain = BoxKey::new(&key)
        .expect("key")
        .open(&raad, &mut sealed)
        .expect("record")
        .to_vec();
    assert_eq!(
        u64::from_be_bytes(plain[..8].try_into().expect("8")),
        1_764_460_800_123
    );
    assert_eq!((plain[8], plain[9]), (1, 0), "qos 1, not retained");
    let tlen = u16::from_be_bytes([plain[10], plain[11]]) as usize;
    assert_eq!(&plain[12..12 + tlen], b"devices/plug/state");
    assert_eq!(&plain[12 + tlen..], br#"{"power":12.5}"#);
}
