//! `--checksum-algorithm`: AWS's flexible checksums. Each upload carries
//! a checksum of its bytes that the server checks before it stores them:
//! the whole object's for a single PUT and (CRC32C, CRC64NVME) for a
//! multipart upload, computed from the parts' checksums that go with each
//! part instead of their Content-MD5. SHA-256 has no whole-object form for
//! multipart uploads: the server keeps a checksum of the parts' checksums.
//!
//! The whole-file MD5 in `md5chksum` stays: it is what change detection
//! and `verify` compare.

use anyhow::{bail, Result};
use base64::Engine as _;
use sha2::Digest as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Crc32c,
    Crc64Nvme,
    Sha256,
}

impl Algorithm {
    pub const NAMES: &'static str = "CRC32C, CRC64NVME or SHA256";

    /// Parses a name as AWS spells it (any case).
    pub fn parse(name: &str, what: &str) -> Result<Algorithm> {
        Ok(match name.trim().to_ascii_uppercase().as_str() {
            "CRC32C" => Algorithm::Crc32c,
            "CRC64NVME" => Algorithm::Crc64Nvme,
            "SHA256" | "SHA-256" => Algorithm::Sha256,
            "MD5" => bail!(
                "{what}: MD5 is what s3ma sends without a checksum algorithm (Content-MD5); \
                 leave the setting out, or choose {}",
                Self::NAMES
            ),
            "CRC32" | "SHA1" | "SHA-1" => bail!(
                "{what}: {name} is not offered (it is weaker and no faster); choose {}",
                Self::NAMES
            ),
            _ => bail!(
                "{what}: unknown checksum algorithm {name:?}; choose {}",
                Self::NAMES
            ),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Crc64Nvme => "CRC64NVME",
            Algorithm::Sha256 => "SHA256",
        }
    }

    pub fn sdk(self) -> aws_sdk_s3::types::ChecksumAlgorithm {
        use aws_sdk_s3::types::ChecksumAlgorithm as A;
        match self {
            Algorithm::Crc32c => A::Crc32C,
            Algorithm::Crc64Nvme => A::Crc64Nvme,
            Algorithm::Sha256 => A::Sha256,
        }
    }

    /// Does a multipart object get the checksum of all its bytes (CRCs
    /// combine), or one of its parts' checksums (SHA-256)?
    pub fn full_object(self) -> bool {
        self != Algorithm::Sha256
    }

    /// How a multipart upload's checksum is made (see [`Self::full_object`]).
    pub fn multipart_type(self) -> aws_sdk_s3::types::ChecksumType {
        if self.full_object() {
            aws_sdk_s3::types::ChecksumType::FullObject
        } else {
            aws_sdk_s3::types::ChecksumType::Composite
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Crc32c => Hasher::Crc(
                self,
                crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
            ),
            Algorithm::Crc64Nvme => Hasher::Crc(
                self,
                crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme),
            ),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// The checksum of `data`.
    pub fn of(self, data: &[u8]) -> Checksum {
        let mut h = self.hasher();
        h.update(data);
        h.finish()
    }
}

/// A checksum being computed.
pub enum Hasher {
    Crc(Algorithm, crc_fast::Digest),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc(_, d) => d.update(data),
            Hasher::Sha256(d) => d.update(data),
        }
    }

    pub fn finish(self) -> Checksum {
        let (algorithm, bytes) = match self {
            // Big-endian, as wide as the CRC: what the x-amz-checksum-*
            // headers carry in base64.
            Hasher::Crc(Algorithm::Crc32c, d) => (
                Algorithm::Crc32c,
                (d.finalize() as u32).to_be_bytes().to_vec(),
            ),
            Hasher::Crc(a, d) => (a, d.finalize().to_be_bytes().to_vec()),
            Hasher::Sha256(d) => (Algorithm::Sha256, d.finalize().to_vec()),
        };
        Checksum {
            algorithm,
            value: base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

/// A checksum in the form the x-amz-checksum-* headers carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: Algorithm,
    /// Base64.
    pub value: String,
}

impl Checksum {
    fn for_algorithm(&self, a: Algorithm) -> Option<String> {
        (self.algorithm == a).then(|| self.value.clone())
    }

    pub fn crc32c(&self) -> Option<String> {
        self.for_algorithm(Algorithm::Crc32c)
    }

    pub fn crc64nvme(&self) -> Option<String> {
        self.for_algorithm(Algorithm::Crc64Nvme)
    }

    pub fn sha256(&self) -> Option<String> {
        self.for_algorithm(Algorithm::Sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_in_the_headers_form() {
        // The check values of each CRC's catalogue entry, and SHA-256 of
        // the same nine bytes.
        let data = b"123456789";
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(
            Algorithm::Crc32c.of(data).value,
            b64(&0xE306_9283u32.to_be_bytes())
        );
        assert_eq!(
            Algorithm::Crc64Nvme.of(data).value,
            b64(&0xAE8B_1486_0A79_9888u64.to_be_bytes())
        );
        assert_eq!(
            Algorithm::Sha256.of(data).value,
            b64(
                &hex::decode("15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225")
                    .expect("valid")
            )
        );
        // Fed in pieces, the same.
        let mut h = Algorithm::Crc32c.hasher();
        h.update(b"1234");
        h.update(b"56789");
        assert_eq!(h.finish(), Algorithm::Crc32c.of(data));
    }

    #[test]
    fn names_parse_in_any_case_and_others_are_refused_with_the_choices() {
        assert_eq!(
            Algorithm::parse("crc32c", "x").expect("valid"),
            Algorithm::Crc32c
        );
        assert_eq!(
            Algorithm::parse("CRC64NVME", "x").expect("valid"),
            Algorithm::Crc64Nvme
        );
        assert_eq!(
            Algorithm::parse("sha256", "x").expect("valid"),
            Algorithm::Sha256
        );
        for bad in ["md5", "crc32", "sha1", "blake3", ""] {
            let e = Algorithm::parse(bad, "--checksum-algorithm")
                .expect_err("invalid")
                .to_string();
            assert!(e.starts_with("--checksum-algorithm: "), "{e}");
            assert!(e.contains("CRC32C, CRC64NVME or SHA256"), "{e}");
        }
    }
}
