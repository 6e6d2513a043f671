//! `--checksum-algorithm CRC32C | CRC64NVME | SHA256`: each upload carries
//! a checksum the server checks and keeps, on single PUTs, streamed PUTs
//! and multipart uploads, in sync and watch; md5chksum stays. On moto;
//! s3s-fs checks the checksums of PUTs but does not confirm those of
//! parts, which stops a multipart upload with a clear error.

use std::time::{Duration, Instant};

use aws_sdk_s3::types::{ChecksumMode, ChecksumType};
use base64::Engine as _;

use crate::harness::*;

/// The checksum, and its type, that a HEAD with checksums reports.
fn stored(b: &Bucket, key: &str, algorithm: &str) -> (Option<String>, Option<ChecksumType>) {
    let h = block_on(
        b.client
            .head_object()
            .bucket(&b.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send(),
    )
    .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
    let value = match algorithm {
        "CRC32C" => h.checksum_crc32_c(),
        "CRC64NVME" => h.checksum_crc64_nvme(),
        _ => h.checksum_sha256(),
    };
    (value.map(str::to_string), h.checksum_type().cloned())
}

/// The checksum of `data` as the headers carry it.
fn expected(algorithm: &str, data: &[u8]) -> String {
    let bytes = match algorithm {
        "CRC32C" => (crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32)
            .to_be_bytes()
            .to_vec(),
        "CRC64NVME" => crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
            .to_be_bytes()
            .to_vec(),
        _ => {
            use sha2::Digest as _;
            sha2::Sha256::digest(data).to_vec()
        }
    };
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

const MULTIPART: [&str; 4] = [
    "--multipart-threshold",
    "5M",
    "--multipart-chunk-size",
    "5M",
];

#[test]
fn each_algorithm_goes_with_single_streamed_and_multipart_uploads() {
    let kind = Kind::Moto;
    for algorithm in ["CRC32C", "CRC64NVME", "SHA256"] {
        let env = TestEnv::new(kind);
        let files = [
            ("small.txt", bytes(1000, 1)),
            // Above the size read into memory: streamed from the file.
            ("dir/streamed.bin", bytes(700 << 10, 2)),
            // Three parts.
            ("big.bin", bytes(12 << 20, 3)),
        ];
        for (rel, data) in &files {
            env.write(rel, data);
        }
        let mut args = vec!["--checksum-algorithm", algorithm];
        args.extend(MULTIPART);
        let first = env.sync(&args).ok();
        assert_eq!(
            first.summary()["uploaded"],
            3,
            "{kind:?} {algorithm}: {first}"
        );
        let b = env.primary();
        for (rel, data) in &files {
            let key = format!("{}{rel}", env.prefix);
            let (value, kind) = stored(&b, &key, algorithm);
            let value =
                value.unwrap_or_else(|| panic!("{kind:?} {algorithm} {rel}: no checksum stored"));
            if *rel == "big.bin" && algorithm == "SHA256" {
                // No whole-object SHA-256 for multipart uploads: the
                // SHA-256 of the three 5 MiB parts' SHA-256s (AWS adds
                // "-3").
                let parts: Vec<u8> = data
                    .chunks(5 << 20)
                    .flat_map(|p| {
                        use sha2::Digest as _;
                        sha2::Sha256::digest(p).to_vec()
                    })
                    .collect();
                let composite = expected("SHA256", &parts);
                assert_eq!(value.trim_end_matches("-3"), composite, "{rel}");
                assert_eq!(kind, Some(ChecksumType::Composite), "{rel}");
            } else {
                assert_eq!(
                    value,
                    expected(algorithm, data),
                    "{kind:?} {algorithm} {rel}"
                );
                if *rel == "big.bin" {
                    assert_eq!(
                        kind,
                        Some(ChecksumType::FullObject),
                        "{kind:?} {algorithm} {rel}"
                    );
                }
            }
        }
        env.converge(Duration::ZERO, &|| first.to_string());
        env.assert_md5chksum(&env.tree(), &|| first.to_string());
        let again = env.sync(&args).ok();
        assert_eq!(
            again.summary()["uploaded"],
            0,
            "{kind:?} {algorithm}: {again}"
        );
        let tree = env.tree().display().to_string();
        env.s3ma(&["verify", &tree, &env.dest(), "--download"]).ok();
        // A changed big file goes again, with the new whole checksum.
        let changed = bytes(11 << 20, 4);
        env.write("big.bin", &changed);
        let run = env.sync(&args).ok();
        assert_eq!(run.summary()["uploaded"], 1, "{kind:?} {algorithm}: {run}");
        let (value, _) = stored(&b, &format!("{}big.bin", env.prefix), algorithm);
        if algorithm != "SHA256" {
            assert_eq!(
                value,
                Some(expected(algorithm, &changed)),
                "{kind:?} {algorithm}"
            );
        }
        env.converge(Duration::ZERO, &|| run.to_string());
    }
}

#[test]
fn watch_uploads_carry_the_checksum() {
    let env = TestEnv::new(Kind::Moto);
    env.write("first.txt", "first");
    let mut args = vec!["--checksum-algorithm", "CRC32C"];
    args.extend(MULTIPART);
    let mut w = env.watch(&args);
    w.ready();
    let b = env.primary();
    let big = bytes(6 << 20, 9);
    env.write("later.txt", "written while watched");
    env.write("later.bin", &big);
    let deadline = Instant::now() + Duration::from_secs(60);
    let want = [
        ("first.txt", expected("CRC32C", b"first")),
        ("later.txt", expected("CRC32C", b"written while watched")),
        ("later.bin", expected("CRC32C", &big)),
    ];
    loop {
        let listing = b.listing();
        let have = |rel: &str| {
            listing.contains_key(&format!("{}{rel}", env.prefix))
                && stored(&b, &format!("{}{rel}", env.prefix), "CRC32C").0
                    == want.iter().find(|w| w.0 == rel).map(|w| w.1.clone())
        };
        if want.iter().all(|(rel, _)| have(rel)) {
            break;
        }
        assert!(Instant::now() < deadline, "{}", w.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(w.term(), 0, "{}", w.logs());
}

#[test]
fn a_server_that_does_not_confirm_part_checksums_stops_the_run_clearly() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("big.bin", bytes(6 << 20, 5));
    let mut args = vec!["--checksum-algorithm", "CRC32C"];
    args.extend(MULTIPART);
    let run = env.sync(&args).code(2);
    assert!(
        run.all()
            .contains("did not confirm the CRC32C checksum sent with part ")
            && run.all().contains("does not support --checksum-algorithm"),
        "{run}"
    );
    assert!(env.listing().is_empty(), "{run}");
    // Single PUTs are confirmed: a small file goes, with its checksum.
    env.write("small.txt", "small");
    std::fs::remove_file(env.tree().join("big.bin")).expect("rm");
    let run = env.sync(&args).ok();
    let (value, _) = stored(
        &env.primary(),
        &format!("{}small.txt", env.prefix),
        "CRC32C",
    );
    assert_eq!(value, Some(expected("CRC32C", b"small")), "{run}");
}

#[test]
fn unknown_algorithms_are_refused_before_anything_is_sent() {
    let env = TestEnv::new(Kind::S3sFs);
    env.write("a.txt", "a");
    for bad in ["MD5", "crc32", "blake3"] {
        let run = env.sync(&["--checksum-algorithm", bad]).code(2);
        assert!(run.all().contains("CRC32C, CRC64NVME or SHA256"), "{run}");
    }
    let config = env.work().join("config.json");
    write_file(&config, r#"{"checksumAlgorithm": "sha1"}"#);
    let run = env
        .sync(&["--config", &config.display().to_string()])
        .code(2);
    assert!(
        run.all().contains("checksumAlgorithm") && run.all().contains("SHA256"),
        "{run}"
    );
    assert!(env.listing().is_empty());
}
