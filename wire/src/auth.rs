//! Authentication: HS256 JWTs for devices and subscribers (SPEC §3, §4, §10).
//!
//! Owns: the claim set, verification (signature, `exp`/`nbf` when present,
//! required `sub`/`role`) and minting, for `sensorgate token`, device-sim
//! and tests alike. Pure functions over a shared [`Authenticator`]; no I/O.
//! The daemon's HTTP layer maps [`AuthError`] to 401/403 bodies.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Who a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Device,
    Subscriber,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Subscriber => "subscriber",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "device" => Ok(Role::Device),
            "subscriber" => Ok(Role::Subscriber),
            other => Err(format!(
                "unknown role {other:?} (expected \"device\" or \"subscriber\")"
            )),
        }
    }
}

/// The claims sensorgate reads. `role` is optional here only so that a token
/// without it can be told apart (401, malformed) from one with another role
/// (403): see [`Authenticator::verify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Subscriber tokens only: the topic filters it may subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub sub: String,
    pub role: Role,
    pub topics: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// 401: no token, bad signature, expired, malformed.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a valid token with the wrong role for this route.
    #[error("{0}")]
    Forbidden(String),
}

/// Verifies and mints tokens with one HS256 secret.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` and `nbf` are enforced only when present (SPEC §3).
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = 0;
        Authenticator {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks `token` and that it carries `want` as its role.
    pub fn verify(&self, token: &str, want: Role) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::Unauthorized(describe_jwt_error(&e)))?;
        let claims = data.claims;
        let role = claims
            .role
            .ok_or_else(|| AuthError::Unauthorized("token has no role claim".into()))?;
        let sub = claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Unauthorized("token has no sub claim".into()))?;
        let role: Role = role
            .parse()
            .map_err(|_| AuthError::Forbidden(format!("role {role:?} may not use this route")))?;
        if role != want {
            return Err(AuthError::Forbidden(format!(
                "role {:?} may not use this route (needs {:?})",
                role.as_str(),
                want.as_str()
            )));
        }
        if role == Role::Device && !crate::is_valid_name(&sub) {
            return Err(AuthError::Unauthorized(
                "sub must be 1-64 characters of [A-Za-z0-9_.:-]".into(),
            ));
        }
        Ok(Identity {
            sub,
            role,
            topics: claims.topics,
        })
    }

    /// Mints a token; `ttl` of `None` means no `exp`.
    pub fn mint(
        &self,
        role: Role,
        sub: &str,
        ttl: Option<Duration>,
        topics: Option<Vec<String>>,
    ) -> String {
        let now = unix_now_secs();
        let claims = Claims {
            sub: Some(sub.to_string()),
            role: Some(role.as_str().to_string()),
            exp: ttl.map(|t| now + t.as_secs()),
            nbf: None,
            iat: Some(now),
            topics,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding of plain claims cannot fail")
    }
}

fn unix_now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn describe_jwt_error(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "token expired".into(),
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)".into(),
        ErrorKind::InvalidSignature => "bad token signature".into(),
        ErrorKind::InvalidAlgorithm => "token algorithm must be HS256".into(),
        _ => format!("malformed token: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_device_token_verifies() {
        let a = Authenticator::new("s3cret");
        let t = a.mint(Role::Device, "d1", Some(Duration::from_secs(60)), None);
        let id = a.verify(&t, Role::Device).unwrap();
        assert_eq!(id.sub, "d1");
        assert_eq!(id.role, Role::Device);
    }

    #[test]
    fn wrong_role_is_forbidden_and_other_secret_unauthorized() {
        let a = Authenticator::new("s3cret");
        let t = a.mint(Role::Subscriber, "web", None, None);
        assert!(matches!(
            a.verify(&t, Role::Device),
            Err(AuthError::Forbidden(_))
        ));
        let b = Authenticator::new("other");
        assert!(matches!(
            b.verify(&t, Role::Subscriber),
            Err(AuthError::Unauthorized(_))
        ));
    }

    #[test]
    fn missing_role_is_unauthorized() {
        let a = Authenticator::new("s3cret");
        let claims = Claims {
            sub: Some("d1".into()),
            role: None,
            exp: None,
            nbf: None,
            iat: None,
            topics: None,
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(matches!(
            a.verify(&t, Role::Device),
            Err(AuthError::Unauthorized(_))
        ));
    }

    #[test]
    fn expired_token_is_unauthorized() {
        let a = Authenticator::new("s3cret");
        let claims = Claims {
            sub: Some("d1".into()),
            role: Some("device".into()),
            exp: Some(1000),
            nbf: None,
            iat: None,
            topics: None,
        };
        let t = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(
            a.verify(&t, Role::Device),
            Err(AuthError::Unauthorized("token expired".into()))
        );
    }
}
