//! Authentication helpers: users who prove possession of their key through the SDK, sockets
//! that show a token, and tokens forged with a known key (to check each kind is refused).

use base64::Engine as _;
use enigma::sdk::{Client, Identity};
use serde_json::{Value, json};

use super::server::Server;
use super::ws::Ws;

/// The token key the auth tests configure (`ENIGMA__AUTH__TOKEN_KEYS`), so they can forge
/// tokens that differ from real ones in exactly one way.
pub const TEST_KID: &str = "test1";
pub const TEST_SECRET: [u8; 32] = [7; 32];

pub fn test_token_keys() -> String {
    format!("{TEST_KID}:{}", base64::engine::general_purpose::STANDARD.encode(TEST_SECRET))
}

/// A user registered with an SDK identity (an X25519 key that can be claimed).
pub struct Claimant {
    pub client: Client,
    pub user: String,
}

impl Claimant {
    pub async fn login(server: &Server) -> Claimant {
        let client = Client::new(&server.url(""), Identity::generate()).unwrap();
        let user = client.login().await.unwrap();
        Claimant { client, user }
    }

    /// Same identity, another replica.
    pub fn on(&self, server: &Server) -> Claimant {
        let client = Client::new(&server.url(""), self.client.identity().clone()).unwrap();
        Claimant { client, user: self.user.clone() }
    }

    /// Proves possession (challenge → token); the user is protected from then on.
    pub async fn token(&self) -> String {
        self.client.authenticate(&self.user).await.unwrap().expect("the server has authentication").token
    }
}

/// A socket at `path` showing `token` as `Authorization: Bearer` (spec mode: no subprotocol).
pub async fn ws_with_token(server: &Server, path: &str, token: &str) -> Ws {
    Ws::try_connect_with(&server.ws_url(path), &[("Authorization", &format!("Bearer {token}"))]).await.unwrap()
}

/// Reads what a refused socket gets: an `unauthorized` error frame, then close 4401.
pub async fn expect_unauthorized(ws: &mut Ws) {
    let frame = ws.recv_json().await;
    assert_eq!(frame["code"], "unauthorized", "{frame}");
    assert!(frame["error"].as_str().is_some_and(|e| !e.is_empty()), "{frame}");
    assert_eq!(ws.expect_close().await.0, 4401);
}

/// A token signed with `secret` under `kid` carrying `claims`.
pub fn forge(kid: &str, secret: &[u8], claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret).unwrap()).unwrap()
}

/// Access-token claims for `user` whose registered key is `public_key`, valid for an hour.
pub fn access_claims(user: &str, public_key: &str, audience: &str) -> Value {
    use sha2::Digest;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let kfp: String = sha2::Sha256::digest(public_key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    json!({"sub": user, "kfp": kfp, "aud": audience, "iat": now, "exp": now + 3600, "jti": "forged", "kind": "access"})
}
