//! Loading the CA private key from the PEM forms CAs are found in: PKCS#8 ("PRIVATE KEY"), and
//! the PKCS#1 ("RSA PRIVATE KEY") and SEC1 ("EC PRIVATE KEY") forms that Istio and OpenSSL write.
//!
//! rcgen's ring backend reads only PKCS#8, so PKCS#1 and SEC1 keys are re-wrapped into a PKCS#8
//! PrivateKeyInfo here. This is not an ASN.1 library: it writes those few structures, and reads
//! only the SEC1 ECPrivateKey it has to take apart.

use std::borrow::Cow;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, SignatureAlgorithm};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::asn1_rs::{Any, Class, FromDer, Oid, Tag};
use x509_parser::prelude::X509Certificate;

use super::CaError;

// Contents octets (no tag or length) of the object identifiers written or compared below.
/// rsaEncryption, 1.2.840.113549.1.1.1 (RFC 8017 appendix A.1).
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480 §2.1.1).
const ID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1 / prime256v1 / P-256, 1.2.840.10045.3.1.7 (RFC 5480 §2.1.1.1).
const SECP256R1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 / P-384, 1.3.132.0.34 (RFC 5480 §2.1.1.1).
const SECP384R1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// secp521r1 / P-521, 1.3.132.0.35: known only to name it in the refusal.
const SECP521R1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
/// secp256k1, 1.3.132.0.10: known only to name it in the refusal.
const SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];

// DER identifier octets (X.690 §8.1.2): universal types, and the constructed context-specific
// tags ECPrivateKey uses for its EXPLICIT [0] and [1] fields.
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OBJECT_IDENTIFIER: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const EXPLICIT_0: u8 = 0xa0;
const EXPLICIT_1: u8 = 0xa1;

/// Loads the CA private key from `key_pem` and checks it belongs to `cert`, the CA certificate.
///
/// `cert` also fills in what a SEC1 key may leave out: its curve and its public key.
pub(super) fn load(key_pem: &str, cert: &X509Certificate<'_>) -> Result<KeyPair, CaError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| match source {
        pem::Error::NoItemsFound => CaError::NoCaKey,
        source => CaError::Pem {
            what: "CA private key",
            source,
        },
    })?;
    let label = pem_label(&key);
    let mismatch = || CaError::KeyMismatch {
        subject: cert.subject().to_string(),
    };
    let bad_key = |reason: String| CaError::BadCaKey { label, reason };
    let pair = match &key {
        PrivateKeyDer::Pkcs1(rsa) => {
            let pkcs8 = private_key_info(&rsa_algorithm(), rsa.secret_pkcs1_der());
            load_pkcs8(&pkcs8, &PKCS_RSA_SHA256).map_err(|err| bad_key(err.to_string()))?
        }
        PrivateKeyDer::Sec1(ec) => {
            let parts = EcPrivateKey::parse(ec.secret_sec1_der()).map_err(|reason| bad_key(reason.to_owned()))?;
            let cert_ec = CertEcKey::of(cert);
            // RFC 5915 makes both fields optional; the certificate holds the same facts.
            let curve = match (parts.curve, &cert_ec) {
                (Some(curve), _) => curve,
                (None, Some(cert_ec)) => cert_ec.curve,
                (None, None) => return Err(mismatch()),
            };
            let algorithm = signing_algorithm(curve).ok_or_else(|| CaError::UnsupportedCurve {
                curve: curve_name(curve),
            })?;
            let (public_key, borrowed) = match (parts.public_key, &cert_ec) {
                (Some(public_key), _) => (Cow::Borrowed(public_key), false),
                (None, Some(cert_ec)) => (Cow::Owned(cert_ec.public_key_bits()), true),
                (None, None) => return Err(mismatch()),
            };
            let inner = ec_private_key(parts.scalar, curve, &public_key);
            let pkcs8 = private_key_info(&ec_algorithm(curve), &inner);
            match load_pkcs8(&pkcs8, algorithm) {
                Ok(pair) => pair,
                // ring checks the public key against the private one, and this one came from
                // the certificate.
                Err(_) if borrowed => return Err(mismatch()),
                Err(err) => return Err(bad_key(err.to_string())),
            }
        }
        // PKCS#8, and any form pki-types adds later, which rcgen then refuses by name.
        _ => KeyPair::try_from(&key).map_err(|err| {
            match CertEcKey::of(cert).filter(|cert_ec| signing_algorithm(cert_ec.curve).is_none()) {
                Some(cert_ec) => CaError::UnsupportedCurve {
                    curve: curve_name(cert_ec.curve),
                },
                None => bad_key(err.to_string()),
            }
        })?,
    };
    if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&pair) {
        return Err(mismatch());
    }
    Ok(pair)
}

/// The PEM label each form of private key is stored under.
pub(super) fn pem_label(key: &PrivateKeyDer<'_>) -> &'static str {
    match key {
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        // PKCS#8, and any form pki-types adds later: PKCS#8 is the generic container.
        _ => "PRIVATE KEY",
    }
}

fn load_pkcs8(der: &[u8], algorithm: &'static SignatureAlgorithm) -> Result<KeyPair, rcgen::Error> {
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), algorithm)
}

/// The signing algorithm rcgen's ring backend has for a key on `curve`, if any.
fn signing_algorithm(curve: &[u8]) -> Option<&'static SignatureAlgorithm> {
    match curve {
        SECP256R1 => Some(&PKCS_ECDSA_P256_SHA256),
        SECP384R1 => Some(&PKCS_ECDSA_P384_SHA384),
        _ => None,
    }
}

/// A curve's common name and dotted OID, for error messages.
fn curve_name(curve: &[u8]) -> String {
    let dotted = Oid::new(Cow::Borrowed(curve)).to_id_string();
    let name = match curve {
        SECP256R1 => "P-256",
        SECP384R1 => "P-384",
        SECP521R1 => "P-521",
        SECP256K1 => "secp256k1",
        _ => return dotted,
    };
    format!("{name} ({dotted})")
}

/// The EC key of a certificate's SubjectPublicKeyInfo (RFC 5480 §2): its named curve and point.
struct CertEcKey<'a> {
    curve: &'a [u8],
    unused_bits: u8,
    point: &'a [u8],
}

impl<'a> CertEcKey<'a> {
    /// `None` when the certificate key is not an EC key on a named curve.
    fn of(cert: &'a X509Certificate<'_>) -> Option<Self> {
        let spki = cert.public_key();
        if spki.algorithm.algorithm.as_bytes() != ID_EC_PUBLIC_KEY {
            return None;
        }
        let parameters = spki.algorithm.parameters.as_ref()?;
        if parameters.tag() != Tag::Oid {
            return None;
        }
        Some(Self {
            curve: parameters.data,
            unused_bits: spki.subject_public_key.unused_bits,
            point: &spki.subject_public_key.data,
        })
    }

    /// The point as the contents of a DER BIT STRING: the unused-bits octet, then the bits.
    fn public_key_bits(&self) -> Vec<u8> {
        let mut bits = Vec::with_capacity(1 + self.point.len());
        bits.push(self.unused_bits);
        bits.extend_from_slice(self.point);
        bits
    }
}

/// The fields of a SEC1 key we re-encode, as contents octets borrowed from the input.
///
/// RFC 5915 §3:
/// ```text
/// ECPrivateKey ::= SEQUENCE {
///   version        INTEGER { ecPrivkeyVer1(1) },
///   privateKey     OCTET STRING,
///   parameters [0] ECParameters {{ NamedCurve }} OPTIONAL,
///   publicKey  [1] BIT STRING OPTIONAL }
/// ```
#[derive(Debug, PartialEq, Eq)]
struct EcPrivateKey<'a> {
    scalar: &'a [u8],
    /// The named curve's OID.
    curve: Option<&'a [u8]>,
    /// The BIT STRING contents: unused-bits octet, then the point.
    public_key: Option<&'a [u8]>,
}

impl<'a> EcPrivateKey<'a> {
    fn parse(der: &'a [u8]) -> Result<Self, &'static str> {
        const NOT_SEC1: &str = "not a DER ECPrivateKey (RFC 5915)";
        let (rest, outer) = Any::from_der(der).map_err(|_| NOT_SEC1)?;
        if !rest.is_empty() || outer.tag() != Tag::Sequence {
            return Err(NOT_SEC1);
        }
        let mut fields = outer.data;
        let version = next_field(&mut fields).ok_or(NOT_SEC1)?;
        if version.tag() != Tag::Integer || version.data != [1] {
            return Err("ECPrivateKey version is not 1");
        }
        let scalar = next_field(&mut fields)
            .filter(|f| f.tag() == Tag::OctetString)
            .ok_or(NOT_SEC1)?;
        let mut key = Self {
            scalar: scalar.data,
            curve: None,
            public_key: None,
        };
        while let Some(field) = next_field(&mut fields) {
            let explicit = |tag| field.class() == Class::ContextSpecific && field.tag() == Tag(tag);
            let inner = |expected| {
                let mut contents = field.data;
                next_field(&mut contents).filter(|inner| inner.tag() == expected && contents.is_empty())
            };
            if explicit(0) && key.curve.is_none() && key.public_key.is_none() {
                let curve = inner(Tag::Oid).ok_or("ECPrivateKey parameters are not a named curve OID")?;
                key.curve = Some(curve.data);
            } else if explicit(1) && key.public_key.is_none() {
                let bits = inner(Tag::BitString).ok_or(NOT_SEC1)?;
                key.public_key = Some(bits.data);
            } else {
                return Err(NOT_SEC1);
            }
        }
        if !fields.is_empty() {
            return Err(NOT_SEC1);
        }
        Ok(key)
    }
}

/// The next DER element of `input`, advancing past it; `None` at the end or on bad DER (the
/// caller then sees leftover bytes or a missing field).
fn next_field<'a>(input: &mut &'a [u8]) -> Option<Any<'a>> {
    let (rest, any) = Any::from_der(input).ok()?;
    *input = rest;
    Some(any)
}

/// RFC 5208 §5, PKCS#8 v1 as ring reads it:
/// `PrivateKeyInfo ::= SEQUENCE { version INTEGER (0), privateKeyAlgorithm AlgorithmIdentifier,
/// privateKey OCTET STRING }`, the OCTET STRING holding the PKCS#1 or SEC1 key.
fn private_key_info(algorithm: &[u8], private_key: &[u8]) -> Vec<u8> {
    let version = tlv(INTEGER, &[&[0]]);
    tlv(SEQUENCE, &[&version, algorithm, &tlv(OCTET_STRING, &[private_key])])
}

/// `AlgorithmIdentifier { rsaEncryption, NULL }`: RFC 3279 §2.3.1 requires the NULL parameters.
fn rsa_algorithm() -> Vec<u8> {
    tlv(SEQUENCE, &[&tlv(OBJECT_IDENTIFIER, &[RSA_ENCRYPTION]), &tlv(NULL, &[])])
}

/// `AlgorithmIdentifier { id-ecPublicKey, namedCurve }` (RFC 5480 §2.1.1).
fn ec_algorithm(curve: &[u8]) -> Vec<u8> {
    tlv(
        SEQUENCE,
        &[
            &tlv(OBJECT_IDENTIFIER, &[ID_EC_PUBLIC_KEY]),
            &tlv(OBJECT_IDENTIFIER, &[curve]),
        ],
    )
}

/// A complete ECPrivateKey (layout at [`EcPrivateKey`]). ring insists on the public key.
fn ec_private_key(scalar: &[u8], curve: &[u8], public_key_bits: &[u8]) -> Vec<u8> {
    let version = tlv(INTEGER, &[&[1]]);
    let parameters = tlv(EXPLICIT_0, &[&tlv(OBJECT_IDENTIFIER, &[curve])]);
    let public_key = tlv(EXPLICIT_1, &[&tlv(BIT_STRING, &[public_key_bits])]);
    tlv(
        SEQUENCE,
        &[&version, &tlv(OCTET_STRING, &[scalar]), &parameters, &public_key],
    )
}

/// One DER element: identifier octet, definite length, then `contents` concatenated.
fn tlv(tag: u8, contents: &[&[u8]]) -> Vec<u8> {
    let len = contents.iter().map(|part| part.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len + 1 + 1 + size_of::<usize>());
    out.push(tag);
    // X.690 §8.1.3: below 128 the short form; else 0x80 | n, then n big-endian octets, the
    // fewest that hold the length (DER, §10.1).
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let octets = len.to_be_bytes();
            let skip = octets.iter().take_while(|&&octet| octet == 0).count();
            let count = octets.len() - skip;
            // `count` is at most size_of::<usize>(), far below 0x80.
            out.push(0x80 | u8::try_from(count).unwrap_or(0x7f));
            out.extend_from_slice(&octets[skip..]);
        }
    }
    for part in contents {
        out.extend_from_slice(part);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;
    use crate::ca::der_to_pem;

    /// The ECPrivateKey inside the PKCS#8 key of a CA we generated: ring writes it without the
    /// optional parameters [0], the curve being in the PKCS#8 AlgorithmIdentifier.
    fn sec1_inside(ca: &CertificateAuthority) -> Vec<u8> {
        let pkcs8 = PrivateKeyDer::from_pem_slice(ca.key_pem().as_bytes()).expect("pkcs8");
        let mut input = pkcs8.secret_der();
        let info = next_field(&mut input).expect("PrivateKeyInfo");
        let mut fields = info.data;
        let _version = next_field(&mut fields).expect("version");
        let _algorithm = next_field(&mut fields).expect("algorithm");
        next_field(&mut fields).expect("privateKey").data.to_vec()
    }

    fn load_with(ca: &CertificateAuthority, label: &str, der: &[u8]) -> Result<KeyPair, CaError> {
        let cert_der = ca.root_der();
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).expect("cert");
        load(&der_to_pem(label, der), &cert)
    }

    #[test]
    fn sec1_without_curve_or_public_key_takes_them_from_the_certificate() {
        let ca = CertificateAuthority::generate("td").expect("ca");
        let sec1 = sec1_inside(&ca);
        let parts = EcPrivateKey::parse(&sec1).expect("SEC1");
        assert_eq!(parts.curve, None, "ring omits the curve inside PKCS#8");
        let pair = load_with(&ca, "EC PRIVATE KEY", &sec1).expect("curve from the certificate");
        let original = KeyPair::from_pem(&ca.key_pem()).expect("pkcs8");
        assert_eq!(pair.public_key_raw(), original.public_key_raw());

        let bare = tlv(SEQUENCE, &[&tlv(INTEGER, &[&[1]]), &tlv(OCTET_STRING, &[parts.scalar])]);
        load_with(&ca, "EC PRIVATE KEY", &bare).expect("curve and public key from the certificate");

        let other = CertificateAuthority::generate("td").expect("ca");
        for der in [sec1, bare] {
            let err = load_with(&other, "EC PRIVATE KEY", &der).expect_err("another CA's key");
            assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
        }
    }

    #[test]
    fn sec1_on_an_unsupported_curve_is_refused_naming_it() {
        let ca = CertificateAuthority::generate("td").expect("ca");
        let parts = EcPrivateKey::parse(&sec1_inside(&ca))
            .map(|p| p.scalar.to_vec())
            .expect("SEC1");
        let p521 = ec_private_key(&parts, SECP521R1, &[0, 4]);
        let err = load_with(&ca, "EC PRIVATE KEY", &p521).expect_err("P-521");
        assert!(matches!(err, CaError::UnsupportedCurve { .. }), "{err}");
        assert!(err.to_string().contains("P-521 (1.3.132.0.35)"), "{err}");
    }

    #[test]
    fn malformed_keys_are_refused_naming_the_pem_label() {
        let ca = CertificateAuthority::generate("td").expect("ca");
        for label in ["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"] {
            let err = load_with(&ca, label, &[0x30, 0x03, 0x02, 0x01, 0x01]).expect_err(label);
            assert!(matches!(err, CaError::BadCaKey { label: l, .. } if l == label), "{err}");
            assert!(err.to_string().contains(&format!("the {label} block")), "{err}");
        }
        for label in ["ENCRYPTED PRIVATE KEY", "CERTIFICATE"] {
            let err = load_with(&ca, label, &[0x30, 0x00]).expect_err(label);
            assert!(matches!(err, CaError::NoCaKey), "{label}: {err}");
            assert!(err.to_string().contains("RSA PRIVATE KEY (PKCS#1)"), "{err}");
        }
        let err = load(
            "-----BEGIN RSA PRIVATE KEY-----\n!!!\n-----END RSA PRIVATE KEY-----\n",
            &x509_parser::parse_x509_certificate(&ca.root_der()).expect("cert").1,
        )
        .expect_err("bad base64");
        assert!(matches!(err, CaError::Pem { .. }), "{err}");
    }

    #[test]
    fn tlv_uses_the_shortest_length_form() {
        assert_eq!(tlv(NULL, &[]), [0x05, 0x00]);
        assert_eq!(tlv(OCTET_STRING, &[&[7; 3], &[8]]), [0x04, 0x04, 7, 7, 7, 8]);
        assert_eq!(tlv(OCTET_STRING, &[&[0; 127]])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(OCTET_STRING, &[&[0; 128]])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(OCTET_STRING, &[&[0; 255]])[..3], [0x04, 0x81, 0xff]);
        assert_eq!(tlv(OCTET_STRING, &[&[0; 256]])[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(tlv(OCTET_STRING, &[&[0; 70_000]])[..5], [0x04, 0x83, 0x01, 0x11, 0x70]);
    }

    #[test]
    fn algorithm_identifiers_match_their_known_encodings() {
        // As OpenSSL writes them (`openssl asn1parse`).
        let rsa = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ];
        assert_eq!(rsa_algorithm(), rsa);
        let p256 = [
            0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
            0x03, 0x01, 0x07,
        ];
        assert_eq!(ec_algorithm(SECP256R1), p256);
    }

    #[test]
    fn ec_private_key_round_trips_and_optional_fields_parse() {
        let scalar = [0x11; 32];
        let bits = [&[0u8, 0x04][..], &[0x22; 64]].concat();
        let full = ec_private_key(&scalar, SECP256R1, &bits);
        assert_eq!(
            EcPrivateKey::parse(&full),
            Ok(EcPrivateKey {
                scalar: &scalar,
                curve: Some(SECP256R1),
                public_key: Some(&bits),
            })
        );

        let version = tlv(INTEGER, &[&[1]]);
        let private_key = tlv(OCTET_STRING, &[&scalar]);
        let bare = tlv(SEQUENCE, &[&version, &private_key]);
        let parsed = EcPrivateKey::parse(&bare).expect("fields [0] and [1] are optional");
        assert_eq!((parsed.curve, parsed.public_key), (None, None));
    }

    #[test]
    fn malformed_ec_private_keys_are_refused() {
        let version = tlv(INTEGER, &[&[1]]);
        let private_key = tlv(OCTET_STRING, &[&[0x11; 32]]);
        let curve = tlv(EXPLICIT_0, &[&tlv(OBJECT_IDENTIFIER, &[SECP256R1])]);
        let explicit_parameters = tlv(EXPLICIT_0, &[&tlv(SEQUENCE, &[&version])]);
        let cases: [(&str, Vec<u8>); 7] = [
            ("empty", Vec::new()),
            ("not a sequence", private_key.clone()),
            ("version 0", tlv(SEQUENCE, &[&tlv(INTEGER, &[&[0]]), &private_key])),
            ("no private key", tlv(SEQUENCE, &[&version])),
            (
                "explicit curve",
                tlv(SEQUENCE, &[&version, &private_key, &explicit_parameters]),
            ),
            ("fields out of order", {
                let public_key = tlv(EXPLICIT_1, &[&tlv(BIT_STRING, &[&[0, 4]])]);
                tlv(SEQUENCE, &[&version, &private_key, &public_key, &curve])
            }),
            (
                "trailing bytes",
                [tlv(SEQUENCE, &[&version, &private_key]), vec![0]].concat(),
            ),
        ];
        for (name, der) in cases {
            assert!(EcPrivateKey::parse(&der).is_err(), "{name}");
        }
    }

    #[test]
    fn curves_are_named_in_messages() {
        assert_eq!(curve_name(SECP521R1), "P-521 (1.3.132.0.35)");
        assert_eq!(curve_name(SECP256K1), "secp256k1 (1.3.132.0.10)");
        assert_eq!(curve_name(&[0x2a, 0x03]), "1.2.3");
        assert!(signing_algorithm(SECP521R1).is_none());
    }
}
