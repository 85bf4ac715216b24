//! The identity of a peer certificate: its first DNS or URI subject alternative name, or else
//! its subject common name.
//!
//! The certificate has been verified by rustls already; this is a minimal DER walk that
//! reads just those two fields and gives up (returns `None`) on anything unexpected.
//!
//! ```text
//! Certificate    ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
//! TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer,
//!                               validity, subject, subjectPublicKeyInfo,
//!                               [1] issuerUID OPTIONAL, [2] subjectUID OPTIONAL,
//!                               [3] extensions OPTIONAL }
//! Extension      ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
//! GeneralName    ::= … dNSName [2] IA5String … uniformResourceIdentifier [6] IA5String …
//! ```

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const OCTET_STRING: u8 = 0x04;
const VERSION: u8 = 0xa0;
const EXTENSIONS: u8 = 0xa3;
const DNS_NAME: u8 = 0x82;
const URI: u8 = 0x86;
/// 2.5.29.17, subjectAltName.
const OID_SAN: &[u8] = &[0x55, 0x1d, 0x11];
/// 2.5.4.3, commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// UTF8String, PrintableString, T61String, IA5String.
const TEXT_TAGS: &[u8] = &[0x0c, 0x13, 0x14, 0x16];

/// A cursor over consecutive DER elements.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element's tag and content.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, rest) = rest.split_at_checked(n)?;
            let len = bytes.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b));
            (len, rest)
        };
        let (content, rest) = rest.split_at_checked(len)?;
        self.0 = rest;
        Some((tag, content))
    }

    /// The next element's content if it has tag `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        self.next().filter(|(t, _)| *t == tag).map(|(_, c)| c)
    }
}

/// The identity of the DER certificate `cert`.
pub(super) fn peer_identity(cert: &[u8]) -> Option<String> {
    let cert = Der(cert).expect(SEQUENCE)?;
    let mut tbs = Der(Der(cert).expect(SEQUENCE)?);
    let (tag, _) = tbs.next()?;
    if tag == VERSION {
        tbs.next()?; // the version came first: this is the serial number
    }
    for _ in 0..3 {
        tbs.next()?; // signature algorithm, issuer, validity
    }
    let subject = tbs.expect(SEQUENCE)?;
    tbs.next()?; // subject public key info
    let mut san = None;
    while let Some((tag, content)) = tbs.next() {
        if tag == EXTENSIONS {
            san = subject_alt_name(content);
        }
    }
    san.or_else(|| common_name(subject))
}

fn subject_alt_name(extensions: &[u8]) -> Option<String> {
    subject_alt_names(extensions).and_then(|n| n.into_iter().next())
}

/// Every DNS and URI subject alternative name of the DER certificate `cert`, in order
/// (none when it cannot be read).
pub(super) fn alt_names(cert: &[u8]) -> Vec<String> {
    (|| {
        let cert = Der(cert).expect(SEQUENCE)?;
        let mut tbs = Der(Der(cert).expect(SEQUENCE)?);
        while let Some((tag, content)) = tbs.next() {
            if tag == EXTENSIONS {
                return subject_alt_names(content);
            }
        }
        None
    })()
    .unwrap_or_default()
}

/// The DNS and URI names of the subjectAltName extension, if there is one.
fn subject_alt_names(extensions: &[u8]) -> Option<Vec<String>> {
    let mut exts = Der(Der(extensions).expect(SEQUENCE)?);
    while let Some((_, ext)) = exts.next() {
        let mut ext = Der(ext);
        if ext.expect(OID)? != OID_SAN {
            continue;
        }
        let (mut tag, mut value) = ext.next()?;
        if tag != OCTET_STRING {
            (tag, value) = ext.next()?; // skip `critical`
        }
        if tag != OCTET_STRING {
            return None;
        }
        let mut names = Der(Der(value).expect(SEQUENCE)?);
        let mut found = Vec::new();
        while let Some((tag, name)) = names.next() {
            if tag == DNS_NAME || tag == URI {
                found.extend(String::from_utf8(name.to_vec()).ok());
            }
        }
        return (!found.is_empty()).then_some(found);
    }
    None
}

fn common_name(subject: &[u8]) -> Option<String> {
    let mut rdns = Der(subject);
    while let Some((tag, rdn)) = rdns.next() {
        if tag != SET {
            continue;
        }
        let mut attrs = Der(rdn);
        while let Some(attr) = attrs.expect(SEQUENCE) {
            let mut attr = Der(attr);
            if attr.expect(OID) == Some(OID_CN) {
                let (tag, value) = attr.next()?;
                return TEXT_TAGS
                    .contains(&tag)
                    .then(|| String::from_utf8(value.to_vec()).ok())
                    .flatten();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(sans: Vec<SanType>, cn: Option<&str>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "Flowgate");
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn identity_table() {
        let cases: Vec<(Vec<SanType>, Option<&str>, Option<&str>)> = vec![
            (
                vec![SanType::DnsName("a.example".try_into().unwrap())],
                Some("cn"),
                Some("a.example"),
            ),
            (
                vec![
                    SanType::IpAddress("10.0.0.1".parse().unwrap()),
                    SanType::URI("spiffe://flowgate/web".try_into().unwrap()),
                    SanType::DnsName("b.example".try_into().unwrap()),
                ],
                None,
                Some("spiffe://flowgate/web"),
            ),
            (vec![], Some("client-7"), Some("client-7")),
            (
                vec![SanType::IpAddress("10.0.0.1".parse().unwrap())],
                Some("cn-only"),
                Some("cn-only"),
            ),
            (vec![], None, None),
        ];
        for (sans, cn, want) in cases {
            let der = cert(sans.clone(), cn);
            let names: Vec<String> = sans
                .iter()
                .filter_map(|s| match s {
                    SanType::DnsName(n) => Some(n.to_string()),
                    SanType::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect();
            assert_eq!(alt_names(&der), names);
            assert_eq!(
                peer_identity(&der).as_deref(),
                want,
                "sans {sans:?}, cn {cn:?}"
            );
        }
    }

    #[test]
    fn garbage_is_none() {
        assert!(alt_names(b"").is_empty());
        assert_eq!(peer_identity(b""), None);
        assert_eq!(peer_identity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(peer_identity(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
