//! Small, deterministic archives and digests for the Flux sources of the tests: a `.tar.gz`
//! of a few files (a Helm chart, the layer of an OCI artifact) and SHA-256 digests (a Helm
//! index's chart digest, OCI content addresses).
//!
//! Written out here rather than taken from `tar`/`flate2`/`sha2` so the dev-only crate keeps
//! its dependency list: the tar is plain ustar, the gzip uses stored (uncompressed) deflate
//! blocks, which every gzip reader accepts, and SHA-256 is FIPS 180-4. Their readers in the
//! tests are the real ones (source-controller, the OCI registry's digest check), and the unit
//! tests below check them against known values.

/// A gzip-compressed tar archive of `files` (path, content), in the given order. Parent
/// directories get entries of their own; every entry has mode 0644 (0755 for directories),
/// owner 0:0 and mtime 0, so the same files always give the same bytes.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    gzip(&tar(files))
}

/// An uncompressed ustar archive of `files`; see [`tar_gz`]. Panics on a path longer than
/// 100 bytes or with `..` components (test code: keep paths short and plain).
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut dirs: Vec<String> = Vec::new();
    for (path, content) in files {
        assert!(
            !path.starts_with('/') && !path.split('/').any(|c| c == ".." || c.is_empty()),
            "tar: bad path {path:?}"
        );
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            let dir = format!("{}/", parts[..i].join("/"));
            if !dirs.contains(&dir) {
                out.extend_from_slice(&tar_header(&dir, 0, b'5', 0o755));
                dirs.push(dir);
            }
        }
        out.extend_from_slice(&tar_header(path, content.len(), b'0', 0o644));
        out.extend_from_slice(content);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    // The end of the archive: two zero blocks.
    out.resize(out.len() + 1024, 0);
    out
}

fn tar_header(name: &str, size: usize, kind: u8, mode: u32) -> [u8; 512] {
    assert!(name.len() <= 100, "tar: path longer than 100 bytes: {name}");
    let mut h = [0u8; 512];
    let octal = |h: &mut [u8; 512], at: usize, width: usize, value: u64| {
        // width - 1 octal digits, then NUL.
        let text = format!("{value:0w$o}", w = width - 1);
        assert!(text.len() == width - 1, "tar: {value} does not fit");
        h[at..at + width - 1].copy_from_slice(text.as_bytes());
    };
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0); // uid
    octal(&mut h, 116, 8, 0); // gid
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 0); // mtime
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is summed with its own field as eight spaces.
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

/// `data` in the gzip format (RFC 1952) with stored deflate blocks (RFC 1951 §3.2.4): no
/// compression, valid for every gzip reader. mtime 0, so the output depends on `data` only.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut chunks = data.chunks(0xffff).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = u16::try_from(chunk.len()).expect("chunk of at most 65535 bytes");
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, the one gzip uses).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The SHA-256 digest of `data` in lowercase hex (what a Helm index's `digest` holds).
pub fn sha256_hex(data: &[u8]) -> String {
    sha256(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The OCI content address of `data`: `sha256:<hex>`.
pub fn oci_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// SHA-256 (FIPS 180-4).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    // The message, a 1 bit, zeros to 56 mod 64 bytes, and its length in bits.
    let mut msg = data.to_vec();
    msg.push(0x80);
    msg.resize(msg.len() + (64 + 56 - msg.len() % 64) % 64, 0);
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_fips_examples() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // A million 'a's: many blocks.
        assert_eq!(
            sha256_hex(&vec![b'a'; 1_000_000]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        // 55, 56 and 64 bytes: the padding's edge cases.
        for (n, want) in [
            (
                55,
                "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318",
            ),
            (
                56,
                "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a",
            ),
            (
                64,
                "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb",
            ),
        ] {
            assert_eq!(sha256_hex(&vec![b'a'; n]), want, "{n} bytes");
        }
    }

    #[test]
    fn crc32_matches_the_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn gzip_frames_stored_blocks() {
        let data = vec![7u8; 70_000];
        let gz = gzip(&data);
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        // Header, two blocks (65535 + 4465 bytes, 5 bytes each of framing), trailer.
        assert_eq!(gz.len(), 10 + 5 + 65_535 + 5 + 4_465 + 8);
        assert_eq!(gz[10], 0, "first block is not the last");
        assert_eq!(gz[10 + 5 + 65_535], 1, "second block is the last");
        assert_eq!(&gz[gz.len() - 4..], &70_000u32.to_le_bytes());
    }

    #[test]
    fn tar_has_directories_headers_and_the_end_blocks() {
        let t = tar(&[("chart/Chart.yaml", b"name: x\n")]);
        // A directory entry, a file header and one data block, two end blocks.
        assert_eq!(t.len(), 512 * 5);
        assert_eq!(&t[..7], b"chart/\0");
        assert_eq!(t[156], b'5');
        assert_eq!(&t[512..528], b"chart/Chart.yaml");
        assert_eq!(&t[512 + 124..512 + 135], b"00000000010");
        assert_eq!(&t[1024..1032], b"name: x\n");
        assert!(t[1536..].iter().all(|&b| b == 0));
        // The checksum field holds the header's byte sum (with itself as spaces).
        let mut h = t[..512].to_vec();
        let field = String::from_utf8(h[148..154].to_vec()).expect("octal");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(u32::from_str_radix(&field, 8).expect("octal"), sum);
    }
}
