//! The little of a certificate's DER that the messages and the checks of
//! a certificate trusted by itself need, and that webpki does not tell:
//! the names of subject and issuer, and the validity period.

/// What the messages and the checks of a certificate trusted by itself
/// need from it, read from its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Facts {
    /// The subject's common name, as `CN=…`.
    pub(super) subject: Option<String>,
    /// The issuer's common name, as `CN=…`.
    pub(super) issuer: Option<String>,
    /// Issuer and subject are the same name.
    pub(super) self_issued: bool,
    /// Unix times.
    pub(super) not_before: u64,
    pub(super) not_after: u64,
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const VERSION: u8 = 0xa0;
/// id-at-commonName, 2.5.4.3.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

impl Facts {
    /// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    /// OPTIONAL, serialNumber, signature, issuer, validity, subject, … } … }
    pub(super) fn of(cert: &[u8]) -> Option<Facts> {
        let (cert, _) = der(cert, SEQUENCE)?;
        let (tbs, _) = der(cert, SEQUENCE)?;
        let tbs = match element(tbs)? {
            (VERSION, _, rest) => rest,
            _ => tbs,
        };
        let (_serial, _, tbs) = element(tbs)?;
        let (_signature, _, tbs) = element(tbs)?;
        let (issuer, tbs) = der(tbs, SEQUENCE)?;
        let (validity, tbs) = der(tbs, SEQUENCE)?;
        let (subject, _) = der(tbs, SEQUENCE)?;
        let (not_before, validity) = time(validity)?;
        let (not_after, _) = time(validity)?;
        Some(Facts {
            subject: common_name(subject),
            issuer: common_name(issuer),
            self_issued: issuer == subject,
            not_before,
            not_after,
        })
    }
}

/// The first DER element of `input`: its tag, its contents, and what
/// follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// The first element's contents and what follows, if it has tag `tag`.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value }: the first
/// common name, as `CN=…`.
fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (mut rdn, rest) = der(name, SET)?;
        name = rest;
        while !rdn.is_empty() {
            let (attribute, rest) = der(rdn, SEQUENCE)?;
            rdn = rest;
            let (oid, value) = der(attribute, OID)?;
            if oid == COMMON_NAME {
                let (_, text, _) = element(value)?;
                return Some(format!("CN={}", String::from_utf8_lossy(text)));
            }
        }
    }
    None
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`) as Unix time, and what follows it.
fn time(input: &[u8]) -> Option<(u64, &[u8])> {
    let (tag, value, rest) = element(input)?;
    let text = std::str::from_utf8(value).ok()?.strip_suffix('Z')?;
    let (year, text) = match (tag, text.len()) {
        (UTC_TIME, 12) => {
            let yy = digits(text.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        (GENERALIZED_TIME, 14) => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| digits(text.get(i..i + 2)?);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some((u64::try_from(secs).ok()?, rest))
}

/// A run of ASCII digits as a number.
fn digits(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tls::tests::{cert, NOT_AFTER, NOT_BEFORE, SELF_SIGNED};

    #[test]
    fn facts_are_read_from_the_der() {
        let facts = Facts::of(cert(SELF_SIGNED).as_ref()).expect("facts");
        assert_eq!(
            facts,
            Facts {
                subject: Some("CN=127.0.0.1".into()),
                issuer: Some("CN=127.0.0.1".into()),
                self_issued: true,
                not_before: NOT_BEFORE,
                not_after: NOT_AFTER,
            }
        );
        assert_eq!(Facts::of(b"\x30\x03\x02\x01\x01"), None);
        assert_eq!(Facts::of(b""), None);
    }

    #[test]
    fn times_in_both_encodings() {
        let utc = |s: &str| time(&[&[UTC_TIME, s.len() as u8], s.as_bytes()].concat()).map(|t| t.0);
        let gen = |s: &str| {
            time(&[&[GENERALIZED_TIME, s.len() as u8], s.as_bytes()].concat()).map(|t| t.0)
        };
        assert_eq!(utc("700101000000Z"), Some(0));
        assert_eq!(utc("000301000000Z"), Some(951_868_800));
        assert_eq!(utc("491231235959Z"), Some(2_524_607_999));
        assert_eq!(gen("20500101000000Z"), Some(2_524_608_000));
        assert_eq!(gen("20240229120000Z"), Some(1_709_208_000));
        assert_eq!(utc("701301000000Z"), None);
        assert_eq!(utc("7001010000Z"), None);
        assert_eq!(utc("700101000000"), None);
        assert_eq!(gen("700101000000Z"), None);
        // Not ASCII: no panic on a split character.
        assert_eq!(utc("700101000\u{e9}0Z"), None);
    }
}
