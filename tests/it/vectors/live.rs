//! The vectors against a real server, for what does not depend on their fixed user ids (a real
//! server draws ids, and everything bound to one differs): the vectors' keys register and can be
//! claimed; each challenge `request` is answered with the vector's `alg` and a `sealed` of the
//! vector's length, which the vector's private key opens; a wrong answer is refused and leaves the
//! ticket answerable; the right answer gets a token, which opens the socket in each of the
//! vectors' request forms and makes `/auth/status` answer the vectors' body; the vectors' refused
//! tokens are refused. The server signs with the vectors' token key.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use enigma::sdk::Identity;
use rsa::pkcs8::DecodePrivateKey;
use serde_json::{Value, json};

use crate::harness::{Server, ServerConfig, Ws, expect_unauthorized};

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))
}

async fn post(server: &Server, path: &str, body: &Value) -> (u16, Value) {
    let response = server.http.post(server.url(path)).json(body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// `value` with every occurrence of the vectors' `from` replaced by the live `to` (user ids,
/// tokens), in every string it holds.
fn live(value: &Value, from: &str, to: &str) -> Value {
    serde_json::from_str(&value.to_string().replace(from, to)).unwrap()
}

/// Opens the sealed secret of a live challenge with the vectors' private key of `key`.
fn open(vectors: &Value, key: &str, user: &str, alg: &str, sealed: &[u8]) -> Vec<u8> {
    if key == "rsa" {
        let private = rsa::PrivateKey::from_pkcs8_pem(text(&vectors["rsa"]["privateKeyPkcs8Pem"])).unwrap();
        private.oaep_decrypt::<rsa::sha2::Sha256>(sealed).unwrap()
    } else {
        let identity = Identity::from_secret_base64url(text(&vectors["x25519"][key]["privateKey"])).unwrap();
        identity.open_challenge(user, alg, sealed).unwrap()
    }
}

#[tokio::test]
async fn the_vectors_keys_claim_and_their_tokens_open_sockets_on_a_real_server() {
    let vectors = super::load();
    let tokens = &vectors["tokens"];
    let server = Server::start(
        &ServerConfig::memory()
            .with("ENIGMA__AUTH__TOKEN_KEYS", text(&tokens["tokenKey"]))
            .with("ENIGMA__AUTH__AUDIENCE", text(&tokens["audience"])),
    );
    let mut bob_token = None;
    let bob_id = server.login(text(&vectors["x25519"]["bob"]["publicKey"])).await;
    for c in vectors["challenges"].as_array().unwrap() {
        let name = text(&c["name"]);
        let user = server.login(text(&c["registered"])).await;
        let (status, response) =
            post(&server, "/auth/challenge", &live(&c["request"], text(&c["userId"]), &user)).await;
        assert_eq!(status, 200, "{name}: {response}");
        assert_eq!(response["alg"], c["response"]["alg"], "{name}");
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&response), keys(&c["response"]), "{name}");
        let sealed = STANDARD.decode(text(&response["sealed"])).unwrap();
        assert_eq!(sealed.len(), STANDARD.decode(text(&c["response"]["sealed"])).unwrap().len(), "{name}");
        let secret = open(&vectors, text(&c["key"]), &user, text(&response["alg"]), &sealed);

        let wrong = json!({"challenge": response["challenge"], "secret": STANDARD.encode([0u8; 32])});
        let (status, refused) = post(&server, "/auth/token", &wrong).await;
        assert_eq!((status, &refused["code"]), (401, &json!("unauthorized")), "{name}: {refused}");
        let answer = json!({"challenge": response["challenge"], "secret": STANDARD.encode(&secret)});
        assert_eq!(keys(&answer), keys(&c["answer"]), "{name}");
        let (status, token) = post(&server, "/auth/token", &answer).await;
        assert_eq!(status, 200, "{name}: the ticket survived the wrong answer: {token}");
        assert_eq!(keys(&token), keys(&tokens["response"]), "{name}");
        assert_eq!(token["userId"], user.as_str(), "{name}");
        if user == bob_id {
            bob_token = token["token"].as_str().map(str::to_owned);
        }
    }
    let bob_token = bob_token.expect("a challenge of Bob's key");

    let swap = |v: &Value| live(&live(v, text(&tokens["token"]), &bob_token), text(&tokens["userId"]), &bob_id);
    for request in tokens["requests"].as_array().unwrap() {
        let (name, request) = (text(&request["name"]), swap(request));
        let headers: Vec<(&str, &str)> =
            request["headers"].as_object().unwrap().iter().map(|(k, v)| (k.as_str(), text(v))).collect();
        if request["protocol"].is_string() {
            let mut ws = Ws::try_connect_with(&server.ws_url(text(&request["path"])), &headers).await.unwrap();
            assert_eq!(ws.protocol.as_deref(), request["protocol"].as_str(), "{name}");
            ws.send_msg(&bob_id, &bob_id, "to myself").await;
            assert_eq!(ws.recv_json().await["payload"], "to myself", "{name}: the socket is Bob's");
        } else {
            let mut get = server.http.get(server.url(text(&request["path"])));
            for (header, value) in headers {
                get = get.header(header, value);
            }
            let response = get.send().await.unwrap();
            assert_eq!(response.status(), 200, "{name}");
            assert_eq!(response.json::<Value>().await.unwrap(), request["response"], "{name}");
        }
    }
    for refused in tokens["refused"].as_array().unwrap() {
        let authorization = format!("Bearer {}", text(&refused["token"]));
        let url = server.ws_url(&format!("/ws/{bob_id}"));
        let mut ws = Ws::try_connect_with(&url, &[("Authorization", &authorization)]).await.unwrap();
        expect_unauthorized(&mut ws).await;
    }
}
