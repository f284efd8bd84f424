//! `enigma`: the command-line client of an Enigma relay.
//!
//! Keys are generated and kept locally (a 0600 key file); messages are sealed with HPKE
//! before they leave and opened after they arrive, so the server only ever relays
//! ciphertext. The user id a server gave this key is remembered in a state file next to the
//! key file (`<key>.state.json`), per server URL, because ids are per server; the URL in one
//! spelling (`http://LOCALHOST:8000` is `http://localhost:8000/`), so a login holds however it
//! is typed. A server that cannot be reached is reported as that, never as a missing login.
//!
//! Contacts' keys are pinned on first use in `<key>.pins.json` (per server): a later lookup
//! that returns another key stops `send`/`chat` with both fingerprints until `enigma trust
//! <userId>` accepts it. Both files are 0600 and replaced atomically without following links.
//! Servers are reached over https:// (the platform's roots, or `--ca-file`); plain http:// only
//! to this machine unless `--insecure-http`.
//!
//! Every key a message is sealed to is proven by the server's verifiable key directory first
//! (`enigma::sdk::directory`); the newest verified root is kept in the pins file, and `enigma
//! audit` checks the directory's whole history and prints the kept root as `EPOCH:HASH:VRF`, which
//! another person gives to their own `enigma audit --root` to find out whether the server showed
//! the two of them the same directory. A server without a directory is used with pins alone (said
//! once), or refused with `--require-directory`.
//!
//! Output is for pipes as much as for people: results on stdout (one line per message with
//! `listen`, JSON with `--json`), notices and errors on stderr, exit code 0 on success, 1 on
//! any failure, 2 on a usage mistake.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use enigma::sdk::{self, Client, ConnectOptions, Connection, Identity, Status};
use enigma_verify::{SeenIn, VerifyError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

#[derive(Parser)]
#[command(name = "enigma", version, about = "End-to-end-encrypted messages through an Enigma relay")]
struct Cli {
    /// Server URL.
    #[arg(long, global = true, env = "ENIGMA_SERVER", default_value = "http://localhost:8000")]
    server: String,
    /// Private key file [default: $XDG_CONFIG_HOME/enigma/identity.key, else
    /// ~/.config/enigma/identity.key].
    #[arg(long, global = true, env = "ENIGMA_KEY")]
    key: Option<PathBuf>,
    /// Trust only the CA certificate(s) in this PEM file for https:// (a private CA).
    #[arg(long, global = true, env = "ENIGMA_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Allow plain http:// to a server on another machine (anyone on the path can then read
    /// and swap the keys your messages are sealed to).
    #[arg(long, global = true)]
    insecure_http: bool,
    /// Refuse a server without a verifiable key directory (instead of relying on pins alone).
    #[arg(long, global = true, env = "ENIGMA_REQUIRE_DIRECTORY")]
    require_directory: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a key pair: writes the private key file (mode 0600) and prints the public key.
    Keygen {
        /// Replace an existing key file (its identity is lost for good).
        #[arg(long)]
        force: bool,
    },
    /// Register the public key with the server (idempotent) and print your user id.
    Login,
    /// Show your user id on this server, your public key and its fingerprint.
    Whoami,
    /// Show the public key a user registered, its fingerprint and whether it is the pinned one.
    Lookup {
        /// The user's id.
        user: String,
    },
    /// Accept the key a user now has on the server (after checking its fingerprint with them),
    /// replacing the pinned one.
    Trust {
        /// The user's id.
        user: String,
    },
    /// Send one message; returns once the server has stored it (prints its inbox id).
    Send {
        /// The recipient's user id.
        user: String,
        /// The message, or `-` to read it from stdin (one trailing newline is dropped).
        text: String,
        /// Seconds to wait for the server to store the message.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Print incoming messages until interrupted. A message is acknowledged (removed from
    /// the server) only after it has been printed.
    Listen {
        /// One JSON object per line: {"from","id","ts","text"} (or "error" instead of "text"
        /// for a message that could not be opened).
        #[arg(long)]
        json: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Chat with one user: lines typed on stdin are sent, incoming messages printed.
    Chat {
        /// The peer's user id.
        user: String,
    },
    /// Verify the server's key directory from epoch 1 to now: every root's signature, every
    /// append-only proof, and the root this client kept on the way. Prints the root it keeps as
    /// EPOCH:HASH:VRF: someone else running `enigma audit --root EPOCH:HASH:VRF` against the same server
    /// finds out whether the two of you were shown the same directory.
    Audit {
        /// A root another client's `enigma audit` printed ("kept root:   EPOCH:HASH:VRF"): the
        /// server's chain must have this root at EPOCH, else the audit fails as a FORK (the two
        /// clients were shown different directories). Repeatable.
        #[arg(long = "root", value_name = "EPOCH:HASH:VRF")]
        roots: Vec<sdk::EpochRoot>,
    },
    /// Forget the directory root kept for this server (only after its operator announced that
    /// the directory was reset: a rollback or a fork is otherwise exactly what it looks like).
    ForgetRoot,
}

/// An error for the person at the terminal; `main` prints it and exits with 1.
struct Failure(String);

impl From<sdk::Error> for Failure {
    fn from(error: sdk::Error) -> Self {
        let hint = match &error {
            sdk::Error::Unreachable { .. } => {
                "\n  is the server running? Choose it with --server or ENIGMA_SERVER.".into()
            }
            sdk::Error::KeyMismatch { .. } => "\n  run `enigma login` to register this key.".into(),
            sdk::Error::KeyChanged { user, .. } => format!("\n  to accept the new key: `enigma trust {user}`"),
            sdk::Error::Directory(
                VerifyError::Fork { seen_in: SeenIn::GivenRoot, .. }
                | VerifyError::Rollback { seen_in: SeenIn::GivenRoot, .. },
            ) => "\n  nothing was kept. A root copied wrongly is refused the same way: check it with whoever gave it \
                  to you."
                .into(),
            sdk::Error::Directory(_) | sdk::Error::AnotherKeyForYou { .. } => {
                "\n  nothing was sent. `enigma audit` checks the directory's whole history.".into()
            }
            sdk::Error::DirectoryWithdrawn { .. } => "\n  nothing was sent.".into(),
            sdk::Error::NoDirectory { .. } => {
                "\n  without --require-directory, keys are checked against pins only.".into()
            }
            _ => String::new(),
        };
        Failure(format!("{error}{hint}"))
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure(error.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("enigma: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("enigma: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// SDK diagnostics (reconnects, retries) on stderr when `ENIGMA_LOG` is set, e.g.
/// `ENIGMA_LOG=debug`.
fn init_logging() {
    if let Ok(filter) = std::env::var("ENIGMA_LOG") {
        let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let key = match cli.key.clone() {
        Some(path) => path,
        None => default_key_path()?,
    };
    let directory = if cli.require_directory { sdk::DirectoryPolicy::Require } else { sdk::DirectoryPolicy::Verify };
    let profile =
        Profile { server: cli.server, key, ca_file: cli.ca_file, insecure_http: cli.insecure_http, directory };
    match cli.command {
        Command::Keygen { force } => keygen(&profile, force),
        Command::Login => login(&profile).await,
        Command::Whoami => whoami(&profile).await,
        Command::Lookup { user } => lookup(&profile, &user).await,
        Command::Trust { user } => trust(&profile, &user).await,
        Command::Send { user, text, timeout } => send(&profile, &user, &text, timeout).await,
        Command::Listen { json, count } => listen(&profile, json, count).await,
        Command::Chat { user } => chat(&profile, &user).await,
        Command::Audit { roots } => audit(&profile, &roots).await,
        Command::ForgetRoot => forget_root(&profile).await,
    }
}

fn default_key_path() -> Result<PathBuf, Failure> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|home| PathBuf::from(home).join(".config")))
        .ok_or_else(|| Failure("no home directory: choose a key file with --key or ENIGMA_KEY".into()))?;
    Ok(config.join("enigma").join("identity.key"))
}

/// Server and key file: who we are, where.
struct Profile {
    server: String,
    key: PathBuf,
    ca_file: Option<PathBuf>,
    insecure_http: bool,
    directory: sdk::DirectoryPolicy,
}

impl Profile {
    fn identity(&self) -> Result<Identity, Failure> {
        Ok(Identity::load(&self.key)?)
    }

    fn client(&self) -> Result<Client, Failure> {
        let identity = self.identity()?;
        let pins = sdk::Pins::open(&pins_path(&self.key))?;
        let options = sdk::ClientOptions {
            ca_file: self.ca_file.clone(),
            insecure_http: self.insecure_http,
            pins: Some(std::sync::Arc::new(pins)),
            directory: self.directory,
            publish_wait: None,
        };
        Ok(Client::with_options(&self.server, identity, options)?)
    }

    /// Our user id on this server, as `login` stored it. Without one the server is asked
    /// whether it answers at all: one that is down (or a mistyped URL) is reported as such,
    /// since `enigma login` would fail there too.
    async fn user_id(&self, client: &Client) -> Result<String, Failure> {
        let state = StateFile::load(&self.key, client.identity());
        let server = client.server().as_str();
        if let Some(user) = state.users.get(server) {
            return Ok(user.clone());
        }
        let elsewhere: Vec<&str> = state.users.keys().map(String::as_str).collect();
        let logins = if elsewhere.is_empty() {
            format!("run `enigma login` to log in to {server}")
        } else {
            format!(
                "you are logged in to {}: choose it with --server or ENIGMA_SERVER, or run `enigma login` to log in \
                 to {server}",
                elsewhere.join(", ")
            )
        };
        if let Err(e) = client.reachable().await {
            let Failure(unreachable) = e.into();
            return Err(Failure(format!(
                "{unreachable}\n  you are not logged in to it either; once it answers, {logins}"
            )));
        }
        Err(match elsewhere.as_slice() {
            [] => Failure(format!("not logged in to {server}: run `enigma login` first")),
            others => Failure(format!(
                "not logged in to {server}; you are logged in to {}\n  choose it with --server or ENIGMA_SERVER, or \
                 run `enigma login` to log in to {server}",
                others.join(", ")
            )),
        })
    }

    /// An acknowledged connection as our user, with messages that say what to do when the
    /// server does not know us.
    async fn connect(&self, client: &Client, options: ConnectOptions) -> Result<(String, Connection), Failure> {
        let me = self.user_id(client).await?;
        let connected = client.connect(&me, options).await;
        tell_directory(client).await;
        match connected {
            Ok(connection) => Ok((me, connection)),
            Err(e) => Err(self.lost(client, &me, e)),
        }
    }

    /// Explains why a connection as `me` failed or stopped.
    fn lost(&self, client: &Client, me: &str, error: sdk::Error) -> Failure {
        match error {
            sdk::Error::UserNotFound(user) if user == me => Failure(format!(
                "the server at {} does not know your user id {me} (a server with the memory engine forgets users \
                 when it restarts): run `enigma login` again",
                client.server()
            )),
            e => e.into(),
        }
    }
}

/// The pinned contact keys of this key file: `<key>.pins.json`.
fn pins_path(key: &Path) -> PathBuf {
    let mut name = key.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".pins.json");
    key.with_file_name(name)
}

/// User ids this key got from servers, next to the key file.
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    /// The key the ids belong to; a regenerated key invalidates them.
    public_key: String,
    /// Server URL → user id.
    users: BTreeMap<String, String>,
}

impl StateFile {
    fn path(key: &Path) -> PathBuf {
        let mut name = key.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".state.json");
        key.with_file_name(name)
    }

    fn load(key: &Path, identity: &Identity) -> StateFile {
        let public_key = identity.public_key().to_base64url();
        let mut state = sdk::private_file::read_private(&Self::path(key))
            .ok()
            .and_then(|text| serde_json::from_str::<StateFile>(&text).ok())
            .filter(|state| state.public_key == public_key)
            .unwrap_or(StateFile { public_key, users: BTreeMap::new() });
        // Logins saved under another spelling of their URL count as the same server's.
        state.users = std::mem::take(&mut state.users)
            .into_iter()
            .map(|(server, user)| match sdk::tls::parse_server_url(&server, true) {
                Ok(url) => (url.to_string(), user),
                Err(_) => (server, user),
            })
            .collect();
        state
    }

    /// Replaces the file atomically, mode 0600, never through a link (`private_file`).
    fn save(&self, key: &Path) -> Result<(), Failure> {
        let path = Self::path(key);
        let mut text = serde_json::to_string_pretty(self).expect("plain struct");
        text.push('\n');
        sdk::private_file::write_private(&path, text.as_bytes())
            .map_err(|e| Failure(format!("cannot save the login state to {}: {e}", path.display())))
    }
}

fn keygen(profile: &Profile, force: bool) -> Result<(), Failure> {
    let identity = Identity::generate();
    identity.save(&profile.key, force)?;
    eprintln!("wrote a new private key to {} (readable by you only)", profile.key.display());
    eprintln!("fingerprint: {}", identity.public_key().fingerprint());
    eprintln!("next: `enigma login` registers it with the server");
    out(&identity.public_key().to_base64url())
}

async fn login(profile: &Profile) -> Result<(), Failure> {
    let client = profile.client()?;
    let user = client.login().await?;
    let mut state = StateFile::load(&profile.key, client.identity());
    state.users.insert(client.server().to_string(), user.clone());
    state.save(&profile.key)?;
    eprintln!("logged in to {}; your user id:", client.server());
    out(&user)
}

async fn whoami(profile: &Profile) -> Result<(), Failure> {
    let client = profile.client()?;
    let key = client.identity().public_key();
    let user = profile.user_id(&client).await;
    out(&format!(
        "user id:     {}\nserver:      {}\npublic key:  {}\nfingerprint: {}\nkey file:    {}\npins:        {}",
        user.as_ref().map(String::as_str).unwrap_or("(not logged in)"),
        client.server(),
        key.to_base64url(),
        key.fingerprint(),
        profile.key.display(),
        pins_path(&profile.key).display()
    ))?;
    let user = user?;
    // Asked of the server; whoami still answers offline with what it knows locally.
    let protection = match client.auth_status(&user).await {
        Ok(status) if status.protected => "yes (only this key's holder can connect as this user)".to_owned(),
        Ok(_) => "no (anyone who knows the user id can connect as it; `enigma listen` claims it)".to_owned(),
        Err(e) => format!("unknown ({e})"),
    };
    out(&format!("protected:   {protection}"))
}

async fn lookup(profile: &Profile, user: &str) -> Result<(), Failure> {
    let client = profile.client()?;
    let raw = client.lookup_raw(user).await?;
    let key = match sdk::PublicKey::from_base64url(&raw) {
        Ok(key) => key,
        Err(_) => {
            let note = "(not an Enigma key: registered by another kind of client; messages cannot be sealed for it)";
            return out(&format!("public key:  {raw}\nfingerprint: {note}"));
        }
    };
    // Proven by the directory first: an unproven key is never pinned.
    let directory = match client.prove_key(user, &raw).await {
        Ok(sdk::KeyProof::Proven(proven)) => {
            format!("proven (version {} of the key, directory epoch {})", proven.version, proven.epoch)
        }
        Ok(sdk::KeyProof::NoDirectory) => "none on this server (checked against the pin only)".to_owned(),
        Err(e) => {
            out(&format!("public key:  {raw}\nfingerprint: {}\ndirectory:   NOT PROVEN", key.fingerprint()))?;
            return Err(e.into());
        }
    };
    tell_directory(&client).await;
    // Looking a key up is a first use: it is pinned now, or compared with the pin.
    let pinned = match client.check_pin(user, &key) {
        Ok(Some(sdk::Verdict::Pinned)) => "yes (the key pinned earlier)".to_owned(),
        Ok(Some(sdk::Verdict::FirstUse)) => {
            "yes (first use: pinned now; check the fingerprint with the user)".to_owned()
        }
        Ok(None) => "no".to_owned(),
        Err(sdk::Error::KeyChanged { pinned, .. }) => {
            format!("NO: THE KEY CHANGED (pinned {pinned}); `enigma trust {user}` accepts the new one")
        }
        Err(e) => return Err(e.into()),
    };
    out(&format!(
        "public key:  {raw}\nfingerprint: {}\npinned:      {pinned}\ndirectory:   {directory}",
        key.fingerprint()
    ))
}

async fn audit(profile: &Profile, roots: &[sdk::EpochRoot]) -> Result<(), Failure> {
    let client = profile.client()?;
    let mut shown = std::time::Instant::now();
    let summary = client
        .audit_directory(roots, |epoch, of| {
            if shown.elapsed() >= std::time::Duration::from_secs(2) {
                shown = std::time::Instant::now();
                eprintln!("enigma: audited epochs 1 to {epoch} of {of}");
            }
        })
        .await?;
    tell_directory(&client).await;
    out(&format!(
        "directory:   {}\nepochs:      1 to {} (every root signed by {}, key id {:?}; every step append-only)\n\
         entries:     {} added after epoch 1 (a key version or the marker of a replaced one; the VRF hides whose)\n\
         users:       not shown by the directory (its VRF hides which ids exist)\n\
         answers:     {} audit answers in {:.1} s\nkept root:   {}",
        client.server(),
        summary.epochs,
        summary.root.signing_key,
        summary.root.key_id,
        summary.leaves,
        summary.answers,
        summary.elapsed.as_secs_f64(),
        summary.kept,
    ))?;
    for root in &summary.compared {
        out(&format!("compared:    {root} matched"))?;
    }
    eprintln!(
        "enigma: to find out whether someone else was shown the same directory: they run `enigma audit --root {}` \
         against {}",
        summary.kept,
        client.server()
    );
    Ok(())
}

async fn forget_root(profile: &Profile) -> Result<(), Failure> {
    let client = profile.client()?;
    match client.forget_root().await? {
        Some(root) => eprintln!(
            "forgot the directory root of epoch {} kept for {}; the next lookup takes the server's newest root on \
             its signature alone",
            root.epoch,
            client.server()
        ),
        None => eprintln!("no directory root was kept for {}", client.server()),
    }
    Ok(())
}

/// Says once per run that the server has no key directory (keys rest on pins alone), or that its
/// directory's signing key changed (a rotation, followed along the kept root's chain).
async fn tell_directory(client: &Client) {
    static TOLD: std::sync::Once = std::sync::Once::new();
    match client.directory_status().await {
        sdk::DirectoryStatus::Absent => TOLD.call_once(|| {
            eprintln!(
                "enigma: note: {} has no verifiable key directory; keys are checked against your pins only \
                 (--require-directory refuses such a server)",
                client.server()
            )
        }),
        sdk::DirectoryStatus::Verified { signer_changed: Some(change), .. } => {
            TOLD.call_once(|| eprintln!("enigma: note: {change}"))
        }
        _ => {}
    }
}

async fn trust(profile: &Profile, user: &str) -> Result<(), Failure> {
    let client = profile.client()?;
    let (key, previous) = client.trust(user).await?;
    match previous {
        Some(pin) if pin.public_key == key.to_base64url() => eprintln!("{user}'s key was already pinned"),
        Some(pin) => eprintln!("{user}'s pinned key changed from {} to:", pin.fingerprint),
        None => eprintln!("{user}'s key is now pinned:"),
    }
    out(&format!("fingerprint: {}", key.fingerprint()))
}

async fn send(profile: &Profile, to: &str, text: &str, timeout: u64) -> Result<(), Failure> {
    let text = if text == "-" {
        let mut input = String::new();
        tokio::io::stdin()
            .read_to_string(&mut input)
            .await
            .map_err(|e| Failure(format!("cannot read the message from stdin: {e}")))?;
        strip_newline(input)
    } else {
        text.to_owned()
    };
    if text.is_empty() {
        return Err(Failure("nothing to send: the message is empty".into()));
    }
    let client = profile.client()?;
    // Only sends: this socket must not read (nor acknowledge) our own inbox, which belongs to
    // `listen` or `chat`.
    let options =
        ConnectOptions { receive: false, send_timeout: std::time::Duration::from_secs(timeout), ..Default::default() };
    let (_, connection) = profile.connect(&client, options).await?;
    let sent = connection.send(to, &text).await;
    connection.close().await;
    out(&sent?.id)
}

fn strip_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

async fn listen(profile: &Profile, json: bool, count: Option<u64>) -> Result<(), Failure> {
    let client = profile.client()?;
    let options = ConnectOptions { auto_ack: false, ..Default::default() };
    let (me, mut connection) = profile.connect(&client, options).await?;
    eprintln!("listening as {me} on {}; Ctrl-C to stop", client.server());
    let _notices = report_status(&connection);
    let mut printed = 0;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let result = loop {
        if count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        let item = tokio::select! {
            item = connection.recv() => item,
            _ = &mut interrupted => break Ok(()),
        };
        match item {
            None => break Ok(()),
            Some(Ok(message)) => {
                let line = if json {
                    serde_json::json!({"from": message.from, "id": message.id, "ts": message.ts, "text": message.text})
                        .to_string()
                } else {
                    format!("{}: {}", message.from, message.text)
                };
                if let Err(e) = out(&line) {
                    break Err(e);
                }
                connection.ack(&message.id);
                printed += 1;
            }
            Some(Err(sdk::Error::Undecryptable { id, from, ts, reason })) => {
                eprintln!("enigma: warning: message {id} from {from} was refused: {reason}");
                if json {
                    let line = serde_json::json!({"from": from, "id": id, "ts": ts, "error": reason.to_string()});
                    if let Err(e) = out(&line.to_string()) {
                        break Err(e);
                    }
                }
                printed += 1;
            }
            Some(Err(e)) => break Err(profile.lost(&client, &me, e)),
        }
    };
    connection.close().await;
    result
}

async fn chat(profile: &Profile, peer: &str) -> Result<(), Failure> {
    let client = profile.client()?;
    // Fail now, not at the first line typed, if the peer cannot receive our messages.
    client.lookup(peer).await?;
    tell_directory(&client).await;
    let options = ConnectOptions { auto_ack: false, ..Default::default() };
    let (me, mut connection) = profile.connect(&client, options).await?;
    eprintln!("chatting with {peer} as {me}; type a line and press Enter to send it, Ctrl-D to quit");
    let _notices = report_status(&connection);

    let sender = connection.sender();
    let peer_owned = peer.to_owned();
    let mut typing = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) => {
                    if let Err(e) = sender.send(&peer_owned, &line).await {
                        eprintln!("enigma: not sent: {e}");
                        if matches!(e, sdk::Error::Replaced | sdk::Error::ConnectionClosed) {
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    eprintln!("enigma: cannot read stdin: {e}");
                    return;
                }
            }
        }
    });
    let short = |user: &str| user.chars().take(8).collect::<String>();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let result = loop {
        let item = tokio::select! {
            item = connection.recv() => item,
            _ = &mut typing => break Ok(()),
            _ = &mut interrupted => break Ok(()),
        };
        match item {
            None => break Ok(()),
            Some(Ok(message)) => {
                let line = if message.from == peer {
                    format!("{}> {}", short(peer), message.text)
                } else {
                    format!("[from {}] {}", message.from, message.text)
                };
                if let Err(e) = out(&line) {
                    break Err(e);
                }
                connection.ack(&message.id);
            }
            Some(Err(e @ sdk::Error::Undecryptable { .. })) => eprintln!("enigma: warning: {e}"),
            Some(Err(e)) => break Err(profile.lost(&client, &me, e)),
        }
    };
    typing.abort();
    connection.close().await;
    result
}

/// Tells the user on stderr when the connection drops and comes back.
fn report_status(connection: &Connection) -> tokio::task::JoinHandle<()> {
    let mut status = connection.status();
    tokio::spawn(async move {
        let mut lost = false;
        while status.changed().await.is_ok() {
            let now = status.borrow_and_update().clone();
            match now {
                Status::Reconnecting { attempt, delay, reason } => {
                    lost = true;
                    eprintln!("enigma: {reason}; reconnecting in {:.1}s (attempt {attempt})", delay.as_secs_f64());
                }
                Status::Connected if lost => {
                    lost = false;
                    eprintln!("enigma: reconnected");
                }
                _ => {}
            }
        }
    })
}

/// Writes one line to stdout. Fails (rather than panicking like `println!`) when stdout is
/// closed, e.g. `enigma listen | head -1`.
fn out(line: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure(format!("cannot write to stdout: {e}")))
}
