//! End-to-end tests of the `jwtgate` command line (SPEC §2) and of the
//! configuration rules it enforces (SPEC §4), run against the real binary.
//!
//! Every child process is owned by a [`ChildGuard`] (killed and reaped on
//! drop, panics included), every wait has a deadline, and every listener is
//! on port 0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use tempfile::TempDir;

#[path = "common/process.rs"]
mod process;

use process::{jwtgate, run_with_timeout, strip_ansi, Output, Server, LISTEN_TIMEOUT};

/// `hashlib.sha256(b"s3cret").hexdigest()`, computed outside this project.
const SHA256_S3CRET: &str = "1ec1c26b50d5d3c58d9583181af8076655fe00756bf7285940ba3670f99fcba0";
/// `hashlib.sha256(b"s3cret\n").hexdigest()`.
const SHA256_S3CRET_NL: &str = "82ba9d712d21dc7585dd6a1f29790679985547f009baee10ea2e3edd41ce957d";
/// `hashlib.sha256(b"a-long-random-client-secret-0123").hexdigest()`.
const SHA256_LONG: &str = "7e9246aa13cf9c78e3883af339ff54dfc18de354d8ecd0e2dc9223dc0566cc30";

/// The longest a one-shot command (keygen, check, …) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest `run` may take to give up on a bad config or address.
const STARTUP_FAILURE_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

fn run(command: Command) -> Output {
    run_with_timeout(command, b"", COMMAND_TIMEOUT)
}

fn run_args(args: &[&str]) -> Output {
    let mut command = jwtgate();
    command.args(args);
    run(command)
}

/// Asserts a failure: exit code 1, nothing on stdout, and exactly one line
/// on stderr that starts with `prefix`. Returns that line.
fn assert_fails_with(output: &Output, prefix: &str) -> String {
    assert_fails_with_context(output, prefix, "")
}

/// [`assert_fails_with`], with `context` (such as a table case's name)
/// leading every assertion message.
fn assert_fails_with_context(output: &Output, prefix: &str, context: &str) -> String {
    assert_eq!(output.code, Some(1), "{context}{output:#?}");
    assert_eq!(output.stdout, "", "{context}{output:#?}");
    let lines: Vec<&str> = output
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{context}expected one clear error line: {output:#?}"
    );
    assert!(
        lines[0].starts_with(prefix),
        "{context}stderr should start with {prefix:?}: {output:#?}"
    );
    lines[0].to_owned()
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

// ---------------------------------------------------------------------------
// Fixture: keys, a client secret hash and a valid config
// ---------------------------------------------------------------------------

fn keygen(alg: &str, kid: &str, out: &Path) -> Output {
    run_args(&[
        "keygen",
        "--alg",
        alg,
        "--kid",
        kid,
        "--out",
        out.to_str().unwrap(),
    ])
}

fn hash_secret(stdin: &[u8], argon2id: bool) -> Output {
    let mut command = jwtgate();
    command.arg("hash-secret");
    if argon2id {
        command.arg("--argon2id");
    }
    run_with_timeout(command, stdin, COMMAND_TIMEOUT)
}

/// A temp dir with `keys/gw.pem` (RS256, signing), `keys/old.pub.pem`
/// (RS256, verify-only) and the `sha256:` hash of the secret `s3cret`.
struct Fixture {
    dir: TempDir,
    secret_hash: String,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = dir.path().join("keys");
        for kid in ["gw", "old"] {
            let output = keygen("RS256", kid, &keys);
            assert_eq!(output.code, Some(0), "{output:#?}");
        }
        // Only the public half of `old` is kept: a verify-only key.
        std::fs::remove_file(keys.join("old.pem")).unwrap();
        let output = hash_secret(b"s3cret\n", false);
        assert_eq!(output.code, Some(0), "{output:#?}");
        let secret_hash = output.stdout.trim_end().to_owned();
        Fixture { dir, secret_hash }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` in the fixture dir and returns its (absolute) path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A valid config: both keys by relative path, a token endpoint with one
    /// client, one protected route, both listeners on loopback port 0.
    fn valid_yaml(&self) -> String {
        format!(
            "\
listen: 127.0.0.1:0
admin: 127.0.0.1:0
keys:
  - kid: gw
    alg: RS256
    private_key: keys/gw.pem
  - kid: old
    alg: RS256
    public_key: keys/old.pub.pem
token_endpoint:
  path: /oauth2/token
  issuer: https://api.example.com
  signing_key: gw
  audience: demo-resource
  clients:
    - id: my-client
      secret_hash: \"{hash}\"
      scopes: [read, write]
routes:
  - name: orders
    match: {{path_prefix: /orders, methods: [GET, POST]}}
    upstream: http://127.0.0.1:9
    policies:
      - jwt:
          audience: orders
          scopes: [read]
",
            hash = self.secret_hash
        )
    }

    fn valid_config(&self) -> PathBuf {
        self.write("gw.yaml", &self.valid_yaml())
    }
}

fn check(config: &Path) -> Output {
    run_args(&["check", "-c", config.to_str().unwrap()])
}

// ---------------------------------------------------------------------------
// keygen
// ---------------------------------------------------------------------------

fn pem_der(text: &str, label: &str) -> Vec<u8> {
    let begin = format!("-----BEGIN {label}-----\n");
    let end = format!("-----END {label}-----\n");
    assert!(text.starts_with(&begin), "{text}");
    assert!(text.ends_with(&end), "{text}");
    let body: String = text[begin.len()..text.len() - end.len()].lines().collect();
    STANDARD.decode(body).expect("PEM body is base64")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_writes_a_pkcs8_private_key_and_an_spki_public_key_for_each_algorithm() {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    let dir = tempfile::tempdir().unwrap();
    // (alg, SPKI DER length: RSA-2048, P-256, Ed25519)
    for (alg, spki_len) in [("RS256", 294), ("ES256", 91), ("EdDSA", 44)] {
        let kid = format!("k-{alg}");
        let out = dir.path().join("out");
        let output = keygen(alg, &kid, &out);
        let private = out.join(format!("{kid}.pem"));
        let public = out.join(format!("{kid}.pub.pem"));
        assert_eq!(output.code, Some(0), "{output:#?}");
        assert_eq!(
            output.stdout,
            format!("{}\n{}\n", display(&private), display(&public)),
            "{alg}"
        );
        assert_eq!(output.stderr, "", "{alg}");

        let private_pem = std::fs::read_to_string(&private).unwrap();
        let public_pem = std::fs::read_to_string(&public).unwrap();
        assert!(
            private_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{alg}: {private_pem}"
        );
        assert!(
            public_pem.starts_with("-----BEGIN PUBLIC KEY-----"),
            "{alg}: {public_pem}"
        );
        pem_der(&private_pem, "PRIVATE KEY");
        assert_eq!(
            pem_der(&public_pem, "PUBLIC KEY").len(),
            spki_len,
            "{alg}: SPKI size"
        );
        #[cfg(unix)]
        assert_eq!(mode(&private), 0o600, "{alg}: private key mode");

        // The two files are one key pair, readable by an independent library.
        let (algorithm, encoding, decoding) = match alg {
            "RS256" => (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
                DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap(),
            ),
            "ES256" => (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap(),
                DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap(),
            ),
            _ => (
                Algorithm::EdDSA,
                EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap(),
                DecodingKey::from_ed_pem(public_pem.as_bytes()).unwrap(),
            ),
        };
        let claims = json!({"sub": "x", "exp": 4_000_000_000u64});
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &encoding).unwrap();
        let mut validation = Validation::new(algorithm);
        validation.validate_aud = false;
        let decoded =
            jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap_or_else(|e| {
                panic!("{alg}: the public key does not verify the private key's signature: {e}")
            });
        assert_eq!(decoded.claims, claims);
    }
}

#[test]
fn keygen_writes_to_the_current_directory_without_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = jwtgate();
    command
        .args(["keygen", "--alg", "ES256", "--kid", "here"])
        .current_dir(dir.path());
    let output = run(command);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert!(dir.path().join("here.pem").is_file());
    assert!(dir.path().join("here.pub.pem").is_file());
}

#[test]
fn keygen_refuses_to_overwrite_an_existing_key() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(keygen("ES256", "k", dir.path()).code, Some(0));
    let private = dir.path().join("k.pem");
    let public = dir.path().join("k.pub.pem");
    let before = (
        std::fs::read(&private).unwrap(),
        std::fs::read(&public).unwrap(),
    );

    let output = keygen("ES256", "k", dir.path());
    let line = assert_fails_with(&output, "jwtgate: ");
    assert!(
        line.contains(&display(&private)),
        "names the existing file: {line}"
    );
    let after = (
        std::fs::read(&private).unwrap(),
        std::fs::read(&public).unwrap(),
    );
    assert!(before == after, "an existing key must be left untouched");
}

/// When only `KID.pub.pem` exists, keygen refuses (it would overwrite it) —
/// and must not leave behind a new `KID.pem` that does not match the
/// existing public key.
#[test]
fn keygen_refusal_leaves_no_new_private_key_behind() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(keygen("ES256", "k", dir.path()).code, Some(0));
    let private = dir.path().join("k.pem");
    let public = dir.path().join("k.pub.pem");
    std::fs::remove_file(&private).unwrap();
    let public_before = std::fs::read(&public).unwrap();

    let output = keygen("ES256", "k", dir.path());
    let line = assert_fails_with(&output, "jwtgate: ");
    assert!(
        line.contains(&display(&public)),
        "names the existing file: {line}"
    );
    assert_eq!(std::fs::read(&public).unwrap(), public_before);
    assert!(
        !private.exists(),
        "a refused keygen wrote {} (a private key that does not match the existing {})",
        display(&private),
        display(&public)
    );
}

#[test]
fn keygen_rejects_an_unknown_algorithm_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = keygen("HS256", "k", &out);
    let line = assert_fails_with(&output, "jwtgate: ");
    assert!(line.contains("HS256"), "{line}");
    assert!(!out.join("k.pem").exists() && !out.join("k.pub.pem").exists());
}

#[test]
fn keygen_rejects_a_kid_that_is_not_a_plain_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let output = keygen("ES256", "../escape", &out);
    let line = assert_fails_with(&output, "jwtgate: ");
    assert!(line.contains("../escape"), "{line}");
    assert!(!dir.path().join("escape.pem").exists());
}

// ---------------------------------------------------------------------------
// hash-secret
// ---------------------------------------------------------------------------

#[test]
fn hash_secret_prints_the_sha256_of_the_secret_without_its_trailing_newline() {
    for stdin in [&b"s3cret\n"[..], b"s3cret", b"s3cret\r\n"] {
        let output = hash_secret(stdin, false);
        assert_eq!(output.code, Some(0), "{output:#?}");
        assert_eq!(
            output.stdout,
            format!("sha256:{SHA256_S3CRET}\n"),
            "stdin {stdin:?}"
        );
    }
}

#[test]
fn hash_secret_ignores_only_one_trailing_newline() {
    let output = hash_secret(b"s3cret\n\n", false);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert_eq!(output.stdout, format!("sha256:{SHA256_S3CRET_NL}\n"));
}

#[test]
fn hash_secret_of_a_long_secret_prints_only_the_hash() {
    let output = hash_secret(b"a-long-random-client-secret-0123\n", false);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert_eq!(output.stdout, format!("sha256:{SHA256_LONG}\n"));
    assert_eq!(output.stderr, "");
}

#[test]
fn hash_secret_argon2id_prints_a_phc_string_that_verifies_the_secret() {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let output = hash_secret(b"s3cret\n", true);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert!(output.stdout.starts_with("$argon2id$"), "{output:#?}");
    assert_eq!(output.stdout.lines().count(), 1, "{output:#?}");
    let phc = output.stdout.trim_end();
    let hash = PasswordHash::new(phc).expect("a PHC string");
    let argon2 = argon2::Argon2::default();
    assert!(
        argon2.verify_password(b"s3cret", &hash).is_ok(),
        "hashes `s3cret`"
    );
    assert!(
        argon2.verify_password(b"s3cret\n", &hash).is_err(),
        "the newline was stripped"
    );
}

#[test]
fn hash_secret_refuses_an_empty_secret() {
    for stdin in [&b""[..], b"\n"] {
        let output = hash_secret(stdin, false);
        let line = assert_fails_with(&output, "jwtgate: ");
        assert!(line.contains("empty"), "stdin {stdin:?}: {line}");
    }
    let output = hash_secret(b"", true);
    assert_fails_with(&output, "jwtgate: ");
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

#[test]
fn check_accepts_a_valid_config() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let output = check(&config);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert_eq!(output.stderr, "", "{output:#?}");
    let ok = format!("{}: OK", display(&config));
    assert!(
        output.stdout.lines().any(|l| l == ok),
        "expected a line {ok:?}: {output:#?}"
    );
}

#[test]
fn check_resolves_key_paths_beside_a_relative_config_path() {
    let fixture = Fixture::new();
    std::fs::create_dir(fixture.path("conf")).unwrap();
    std::fs::rename(fixture.path("keys"), fixture.path("conf/keys")).unwrap();
    fixture.write("conf/gw.yaml", &fixture.valid_yaml());
    let mut command = jwtgate();
    command
        .args(["check", "-c", "conf/gw.yaml"])
        .current_dir(fixture.dir.path());
    let output = run(command);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert!(
        output.stdout.lines().any(|l| l == "conf/gw.yaml: OK"),
        "{output:#?}"
    );
}

/// SPEC §4: paths are relative to the directory of the config path as
/// given; a symlinked config file is not followed to find that directory.
#[cfg(unix)]
#[test]
fn check_does_not_follow_a_config_symlink_to_resolve_paths() {
    let fixture = Fixture::new();
    std::fs::create_dir(fixture.path("mount")).unwrap();
    std::fs::create_dir(fixture.path("elsewhere")).unwrap();
    std::fs::rename(fixture.path("keys"), fixture.path("mount/keys")).unwrap();
    fixture.write("elsewhere/gw.yaml", &fixture.valid_yaml());
    std::os::unix::fs::symlink("../elsewhere/gw.yaml", fixture.path("mount/gw.yaml")).unwrap();
    let config = fixture.path("mount/gw.yaml");
    let output = check(&config);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert!(
        output
            .stdout
            .lines()
            .any(|l| l == format!("{}: OK", display(&config))),
        "{output:#?}"
    );
}

#[test]
fn check_accepts_demo_features_on_loopback() {
    let fixture = Fixture::new();
    let config = fixture.write(
        "demo.yaml",
        "\
listen: 127.0.0.1:0
keys:
  - kid: demo
    alg: RS256
    generate: true
token_endpoint:
  path: /t
  signing_key: demo
  audience: a
  any_client: true
",
    );
    let output = check(&config);
    assert_eq!(output.code, Some(0), "{output:#?}");
}
const ANY_CLIENT_ON_ALL_INTERFACES: &str = "\
listen: 0.0.0.0:8080
admin: 127.0.0.1:0
keys:
  - kid: gw
    alg: RS256
    private_key: keys/gw.pem
token_endpoint:
  path: /oauth2/token
  signing_key: gw
  audience: demo-resource
  any_client: true
";

/// How a broken-config case makes its file.
enum Yaml {
    /// [`Fixture::valid_yaml`] with `from` (which it must hold) replaced by
    /// `to`.
    Edit { from: String, to: String },
    /// This text, as it stands.
    Literal(&'static str),
}

fn edit(from: &str, to: &str) -> Yaml {
    Yaml::Edit {
        from: from.to_owned(),
        to: to.to_owned(),
    }
}

/// A config `check` must refuse, naming the file and then `prefix`.
struct BrokenConfig {
    name: &'static str,
    /// Run on the fixture before the config is written (extra key files).
    setup: Option<fn(&Fixture)>,
    yaml: Yaml,
    /// What the one stderr line must start with after `jwtgate: FILE: `.
    prefix: String,
    /// What that line must also contain.
    contains: &'static [&'static str],
}

fn broken(name: &'static str, yaml: Yaml, prefix: impl Into<String>) -> BrokenConfig {
    BrokenConfig {
        name,
        setup: None,
        yaml,
        prefix: prefix.into(),
        contains: &[],
    }
}

impl BrokenConfig {
    fn containing(self, contains: &'static [&'static str]) -> BrokenConfig {
        BrokenConfig { contains, ..self }
    }

    fn after(self, setup: fn(&Fixture)) -> BrokenConfig {
        BrokenConfig {
            setup: Some(setup),
            ..self
        }
    }
}

/// SPEC §4: each broken config is refused by `check` with one line naming
/// the file, the field (and, where it helps, the line or the value).
#[test]
fn check_names_the_file_and_field_of_each_broken_config() {
    let fixture = Fixture::new();
    let private_key_file =
        |file: &str| format!("keys[0].private_key: {}: ", display(&fixture.path(file)));
    let cases = vec![
        broken(
            "check_names_the_file_field_and_line_of_an_unknown_key",
            edit("{path_prefix: /orders,", "{path_prefx: /orders,"),
            "routes[0].match: unknown field `path_prefx`",
        )
        .containing(&[" line 21 "]),
        broken(
            "check_names_the_file_and_line_of_a_yaml_syntax_error",
            Yaml::Literal("listen: 127.0.0.1:0\nkeys:\n- kid: a\n  alg: RS256\n bad: x\n"),
            "",
        )
        .containing(&["line 5"]),
        broken(
            "check_names_a_missing_key_file",
            edit("keys/gw.pem", "keys/missing.pem"),
            private_key_file("keys/missing.pem"),
        ),
        broken(
            "check_names_a_key_file_that_is_not_pem",
            edit("keys/gw.pem", "keys/garbage.pem"),
            private_key_file("keys/garbage.pem"),
        )
        .after(|fixture| {
            fixture.write("keys/garbage.pem", "this is not a key\n");
        }),
        broken(
            "check_names_a_pem_block_that_holds_no_usable_key",
            edit("keys/gw.pem", "keys/junk.pem"),
            private_key_file("keys/junk.pem"),
        )
        .after(|fixture| {
            fixture.write(
                "keys/junk.pem",
                "-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
            );
        }),
        broken(
            "check_refuses_a_key_of_another_algorithm_family",
            edit("keys/gw.pem", "keys/ec.pem"),
            private_key_file("keys/ec.pem"),
        )
        .after(|fixture| {
            assert_eq!(keygen("ES256", "ec", &fixture.path("keys")).code, Some(0));
        }),
        broken(
            "check_refuses_a_verify_only_signing_key",
            edit("signing_key: gw", "signing_key: old"),
            "token_endpoint.signing_key: ",
        )
        .containing(&["old"]),
        broken(
            "check_refuses_an_unknown_signing_key",
            edit("signing_key: gw", "signing_key: nope"),
            "token_endpoint.signing_key: ",
        )
        .containing(&["nope"]),
        broken(
            "check_refuses_any_client_on_a_non_loopback_listen",
            Yaml::Literal(ANY_CLIENT_ON_ALL_INTERFACES),
            "token_endpoint.any_client: ",
        )
        .containing(&["0.0.0.0:8080"]),
        broken(
            "check_refuses_a_generated_key_on_a_non_loopback_listen",
            Yaml::Literal(
                "listen: 0.0.0.0:8080\nkeys:\n  - kid: demo\n    alg: RS256\n    generate: true\n",
            ),
            "keys[0].generate: ",
        )
        .containing(&["0.0.0.0:8080"]),
        broken(
            "check_requires_an_audience_in_a_jwt_policy",
            edit("          audience: orders\n", ""),
            "routes[0].policies[0].jwt",
        )
        .containing(&["audience"]),
        broken(
            "check_refuses_an_empty_audience_list_in_a_jwt_policy",
            edit("audience: orders", "audience: []"),
            "routes[0].policies[0].jwt.audience: ",
        ),
        broken(
            "check_refuses_a_reserved_route_name",
            edit("  - name: orders", "  - name: none"),
            "routes[0].name: ",
        )
        .containing(&["reserved"]),
        broken(
            "check_refuses_a_client_secret_that_is_not_a_hash",
            edit(&fixture.secret_hash, "s3cret"),
            "token_endpoint.clients[0].secret_hash: ",
        ),
    ];

    for case in cases {
        let name = case.name;
        if let Some(setup) = case.setup {
            setup(&fixture);
        }
        let yaml = match &case.yaml {
            Yaml::Edit { from, to } => {
                let valid = fixture.valid_yaml();
                assert!(
                    valid.contains(from.as_str()),
                    "{name}: the valid config has no {from:?} to edit"
                );
                valid.replace(from.as_str(), to)
            }
            Yaml::Literal(text) => (*text).to_owned(),
        };
        let config = fixture.write(&format!("{name}.yaml"), &yaml);
        let prefix = format!("jwtgate: {}: {}", display(&config), case.prefix);
        let line = assert_fails_with_context(&check(&config), &prefix, &format!("{name}: "));
        for needle in case.contains {
            assert!(line.contains(needle), "{name}: no {needle:?} in {line}");
        }
    }
}

/// Every key has a default, so an empty file would otherwise be a gateway
/// with nothing in it (and a truncated file, caught mid-write by hot reload,
/// would empty a running one).
#[test]
fn check_refuses_an_empty_config() {
    let fixture = Fixture::new();
    for text in ["", "\n# nothing but a comment\n"] {
        let config = fixture.write("empty.yaml", text);
        let output = check(&config);
        assert_fails_with(
            &output,
            &format!("jwtgate: {}: the config is empty", display(&config)),
        );
    }
}

#[test]
fn check_names_a_config_file_that_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nope.yaml");
    assert_fails_with(&check(&config), &format!("jwtgate: {}: ", display(&config)));
}

// ---------------------------------------------------------------------------
// token
// ---------------------------------------------------------------------------

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn decode_segment(segment: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap_or_else(|e| panic!("{segment:?} is not unpadded base64url: {e}"));
    serde_json::from_slice(&bytes).expect("a JSON segment")
}

/// Checks `stdout` is exactly one line holding a compact JWS; returns the
/// token, its header and its claims.
fn parse_token_output(output: &Output) -> (String, Value, Value) {
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert!(output.stdout.ends_with('\n'), "{output:#?}");
    assert_eq!(
        output.stdout.lines().count(),
        1,
        "the token alone: {output:#?}"
    );
    let token = output.stdout.trim_end_matches('\n').to_owned();
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "{token}");
    assert!(
        segments.iter().all(|s| !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')),
        "{token}"
    );
    let header = decode_segment(segments[0]);
    let claims = decode_segment(segments[1]);
    (token, header, claims)
}

fn claim_u64(claims: &Value, name: &str) -> u64 {
    claims[name]
        .as_u64()
        .unwrap_or_else(|| panic!("`{name}` must be a number: {claims}"))
}

#[test]
fn token_prints_one_signed_jwt_with_the_requested_claims() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let before = now();
    let output = run_args(&[
        "token",
        "-c",
        config.to_str().unwrap(),
        "--sub",
        "alice",
        "--scope",
        "read write",
        "--aud",
        "orders",
        "--ttl",
        "60s",
    ]);
    let after = now();
    let (token, header, claims) = parse_token_output(&output);
    assert_eq!(header, json!({"typ": "JWT", "alg": "RS256", "kid": "gw"}));
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["aud"], "orders", "{claims}");
    assert_eq!(claims["scopes"], "read write", "{claims}");
    assert_eq!(claims["iss"], "https://api.example.com", "{claims}");
    let (iat, exp, nbf) = (
        claim_u64(&claims, "iat"),
        claim_u64(&claims, "exp"),
        claim_u64(&claims, "nbf"),
    );
    assert!(
        (before..=after).contains(&iat),
        "iat {iat} not in {before}..={after}"
    );
    assert_eq!(exp - iat, 60, "{claims}");
    assert_eq!(iat - nbf, 120, "default not_before_skew: {claims}");
    assert!(
        claims["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{claims}"
    );

    // The signature verifies with the public half written by keygen.
    assert_token_verifies(
        &token,
        &fixture.path("keys/gw.pub.pem"),
        jsonwebtoken::Algorithm::RS256,
        "orders",
        Some("https://api.example.com"),
    );
}

#[test]
fn token_defaults_come_from_the_token_endpoint_config() {
    let fixture = Fixture::new();
    assert_eq!(keygen("EdDSA", "ed", &fixture.path("keys")).code, Some(0));
    let config = fixture.write(
        "ed.yaml",
        "\
listen: 127.0.0.1:0
keys:
  - kid: ed
    alg: EdDSA
    private_key: keys/ed.pem
token_endpoint:
  path: /oauth2/token
  signing_key: ed
  ttl: 90s
  not_before_skew: 30s
  audience: demo-resource
  clients: []
",
    );
    let output = run_args(&["token", "-c", config.to_str().unwrap(), "--sub", "bob"]);
    let (token, header, claims) = parse_token_output(&output);
    assert_eq!(header, json!({"typ": "JWT", "alg": "EdDSA", "kid": "ed"}));
    assert_eq!(claims["sub"], "bob", "{claims}");
    assert_eq!(claims["aud"], "demo-resource", "{claims}");
    assert!(
        claims.get("iss").is_none(),
        "no issuer configured: {claims}"
    );
    let (iat, exp, nbf) = (
        claim_u64(&claims, "iat"),
        claim_u64(&claims, "exp"),
        claim_u64(&claims, "nbf"),
    );
    assert_eq!(exp - iat, 90, "config ttl: {claims}");
    assert_eq!(iat - nbf, 30, "config not_before_skew: {claims}");

    assert_token_verifies(
        &token,
        &fixture.path("keys/ed.pub.pem"),
        jsonwebtoken::Algorithm::EdDSA,
        "demo-resource",
        None,
    );
}

#[test]
fn token_needs_a_token_endpoint() {
    let fixture = Fixture::new();
    let config = fixture.write(
        "gateway-only.yaml",
        "listen: 127.0.0.1:0\nkeys:\n  - kid: gw\n    alg: RS256\n    private_key: keys/gw.pem\n",
    );
    let output = run_args(&["token", "-c", config.to_str().unwrap(), "--sub", "alice"]);
    assert_fails_with(
        &output,
        &format!("jwtgate: {}: token_endpoint", display(&config)),
    );
}

#[test]
fn token_reports_config_errors_like_check() {
    let fixture = Fixture::new();
    let yaml = fixture
        .valid_yaml()
        .replace("signing_key: gw", "signing_key: old");
    let config = fixture.write("bad.yaml", &yaml);
    let output = run_args(&["token", "-c", config.to_str().unwrap(), "--sub", "alice"]);
    assert_fails_with(
        &output,
        &format!(
            "jwtgate: {}: token_endpoint.signing_key: ",
            display(&config)
        ),
    );
}

// ---------------------------------------------------------------------------
// run (and no subcommand)
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// One `GET` over a fresh connection with `Connection: close`; `None` when
/// the connection or the response fails.
fn http_get(addr: SocketAddr, path: &str) -> Option<HttpResponse> {
    parse_response(&http_get_raw(addr, path, Duration::from_secs(5)).ok()?)
}

/// The bytes a `GET` with `Connection: close` gets back before the server
/// closes the connection (or before `timeout`: a `WouldBlock`/`TimedOut`
/// error).
fn http_get_raw(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    Ok(raw)
}

/// A complete HTTP/1.1 response (a body of `Content-Length` bytes, or
/// chunked up to its last chunk, or up to the close); `None` otherwise.
fn parse_response(raw: &[u8]) -> Option<HttpResponse> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let body = &raw[split + 4..];
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked");
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        // Fewer bytes than announced: the connection was cut short.
        body.get(..length)?.to_vec()
    } else {
        body.to_vec()
    };
    Some(HttpResponse { status, head, body })
}

/// The JWKS served at `addr` names the fixture's two keys.
fn assert_serves_the_fixture_jwks(addr: SocketAddr) {
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0);
    let response = http_get(addr, "/.well-known/jwks.json").expect("a JWKS response");
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .head
            .to_ascii_lowercase()
            .contains("\r\ncontent-type: application/json"),
        "{response:?}"
    );
    let jwks: Value = serde_json::from_slice(&response.body).expect("a JSON body");
    let keys = jwks["keys"].as_array().expect("`keys` array");
    let gw = keys
        .iter()
        .find(|k| k["kid"] == "gw")
        .unwrap_or_else(|| panic!("kid `gw` in {jwks}"));
    assert_eq!(gw["alg"], "RS256", "{jwks}");
    assert_eq!(gw["use"], "sig", "{jwks}");
    assert!(
        keys.iter().any(|k| k["kid"] == "old"),
        "verify-only kid `old` in {jwks}"
    );
}

#[test]
fn run_logs_the_bound_address_and_serves_the_jwks() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let mut server = Server::run(&config);
    let addr = server.public_addr();
    assert_serves_the_fixture_jwks(addr);
    assert!(
        server
            .seen
            .iter()
            .any(|l| strip_ansi(l).contains(&format!("listening on {addr}"))),
        "{:?}",
        server.seen
    );
}

#[test]
fn no_subcommand_with_jwtgate_config_serves_that_file() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let mut command = jwtgate();
    command.env("JWTGATE_CONFIG", &config);
    let mut server = Server::spawn(command);
    let addr = server.public_addr();
    assert_serves_the_fixture_jwks(addr);
}

#[test]
fn run_with_json_logs_writes_json_lines() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let mut command = jwtgate();
    command.args([
        "run",
        "-c",
        config.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    let mut server = Server::spawn(command);
    let addr = server.public_addr();
    let line = server
        .seen
        .iter()
        .find(|l| l.contains(&format!("listening on {addr}")))
        .expect("the listening line");
    let json: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
    assert_eq!(
        json["fields"]["message"],
        format!("listening on {addr}"),
        "{json}"
    );
}

/// Logs piped to a file or a collector (journald, Kubernetes) must not carry
/// terminal colour codes (what Envoy/NGINX users expect of a log line).
#[test]
fn run_logs_have_no_terminal_escapes_when_stderr_is_not_a_terminal() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let mut command = jwtgate();
    command
        .args(["run", "-c", config.to_str().unwrap()])
        .env_remove("NO_COLOR");
    let mut server = Server::spawn(command);
    server.public_addr();
    let escaped: Vec<&String> = server.seen.iter().filter(|l| l.contains('\x1b')).collect();
    assert!(
        escaped.is_empty(),
        "ANSI escapes in piped logs: {escaped:?}"
    );
}

/// The kids in the JWKS served at `addr`.
fn served_kids(addr: SocketAddr) -> Vec<String> {
    let response = http_get(addr, "/.well-known/jwks.json").expect("a JWKS response");
    assert_eq!(response.status, 200, "{response:?}");
    let jwks: Value = serde_json::from_slice(&response.body).expect("a JSON body");
    jwks["keys"]
        .as_array()
        .expect("`keys` array")
        .iter()
        .map(|k| k["kid"].as_str().expect("a kid").to_owned())
        .collect()
}

/// SPEC §5: every SIGHUP is a full, counted reload — also when nothing
/// changed — and a `listen` change is logged as needing a restart while the
/// rest of the reload applies. SIGHUP never kills the gateway.
#[test]
fn run_reloads_on_sighup_and_logs_what_needs_a_restart() {
    const RELOAD_WAIT: Duration = Duration::from_secs(3);
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let mut server = Server::run(&config);
    let addr = server.public_addr();
    let reloaded_by_sighup = |l: &str| l.contains("config reloaded from") && l.contains("SIGHUP");

    for _ in 0..2 {
        server.hang_up();
        let line = server.wait_for_line(RELOAD_WAIT, reloaded_by_sighup);
        assert!(line.contains(&display(&config)), "{line}");
    }
    assert_eq!(served_kids(addr), ["gw", "old"]);

    // A new listen address and one key fewer: the key goes at once, the
    // address waits for a restart.
    let moved = fixture
        .valid_yaml()
        .replace("listen: 127.0.0.1:0", "listen: 127.0.0.1:1")
        .replace(
            "  - kid: old\n    alg: RS256\n    public_key: keys/old.pub.pem\n",
            "",
        );
    std::fs::write(&config, moved).unwrap();
    server.hang_up();
    let warning = server.wait_for_line(RELOAD_WAIT, |l| l.contains("`listen` changed"));
    assert!(
        warning.contains("WARN")
            && warning.contains("changed from 127.0.0.1:0 to 127.0.0.1:1: restart to apply it"),
        "{warning}"
    );
    server.wait_for_line(RELOAD_WAIT, reloaded_by_sighup);
    assert_eq!(served_kids(addr), ["gw"], "served on the old address");

    std::fs::write(&config, "listen: [").unwrap();
    server.hang_up();
    let failure = server.wait_for_line(RELOAD_WAIT, |l| {
        l.contains("config reload failed") && l.contains("SIGHUP")
    });
    assert!(
        failure.contains("ERROR")
            && failure.contains(&format!(
                "still serving the previous config: {}: ",
                display(&config)
            )),
        "{failure}"
    );
    assert_eq!(
        served_kids(addr),
        ["gw"],
        "the previous config still serves"
    );
    assert_eq!(server.child.0.try_wait().unwrap(), None, "still running");
}

#[test]
fn run_refuses_a_config_file_that_cannot_be_read() {
    let mut command = jwtgate();
    command.args(["run", "-c", "/nonexistent.yaml"]);
    let output = run_with_timeout(command, b"", STARTUP_FAILURE_TIMEOUT);
    assert_fails_with(&output, "jwtgate: /nonexistent.yaml: ");
}

#[test]
fn run_refuses_demo_features_on_a_non_loopback_listen() {
    let fixture = Fixture::new();
    let config = fixture.write("bad.yaml", ANY_CLIENT_ON_ALL_INTERFACES);
    let mut command = jwtgate();
    command.args(["run", "-c", config.to_str().unwrap()]);
    let output = run_with_timeout(command, b"", STARTUP_FAILURE_TIMEOUT);
    assert_fails_with(
        &output,
        &format!("jwtgate: {}: token_endpoint.any_client: ", display(&config)),
    );
}

#[test]
fn run_names_a_listen_address_already_in_use() {
    let fixture = Fixture::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let yaml = fixture
        .valid_yaml()
        .replace("listen: 127.0.0.1:0", &format!("listen: {addr}"));
    let config = fixture.write("busy.yaml", &yaml);
    let mut command = jwtgate();
    command.args(["run", "-c", config.to_str().unwrap()]);
    let output = run_with_timeout(command, b"", STARTUP_FAILURE_TIMEOUT);
    assert_eq!(output.code, Some(1), "{output:#?}");
    let errors: Vec<&str> = output
        .stderr
        .lines()
        .filter(|l| l.starts_with("jwtgate: "))
        .collect();
    assert_eq!(errors.len(), 1, "{output:#?}");
    assert!(
        errors[0].contains(&addr.to_string()),
        "names {addr}: {output:#?}"
    );
    drop(taken);
}

/// The shipped example passes `check` once the README's keygen step ran.
#[test]
fn the_example_config_passes_check_after_the_readme_keygen_step() {
    let dir = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml");
    let config = dir.path().join("example.yaml");
    std::fs::copy(example, &config).unwrap();
    let keys = dir.path().join("keys");
    assert_eq!(keygen("RS256", "gw-2026-12", &keys).code, Some(0));
    assert_eq!(keygen("ES256", "gw-2026-06", &keys).code, Some(0));
    let output = check(&config);
    assert_eq!(output.code, Some(0), "{output:#?}");
    assert!(
        output
            .stdout
            .starts_with(&format!("{}: OK\n", display(&config))),
        "{output:#?}"
    );
}

/// `check` falls back to `JWTGATE_CONFIG` like `run` does.
#[test]
fn check_reads_jwtgate_config_when_no_c_is_given() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let mut command = jwtgate();
    command.arg("check").env("JWTGATE_CONFIG", &config);
    let output = run(command);
    assert_eq!(output.code, Some(0), "{output:#?}");
}

/// Verifies `token` with the independent `jsonwebtoken` crate against the
/// public key file keygen wrote, checking audience and (when given) issuer.
fn assert_token_verifies(
    token: &str,
    public_key: &Path,
    alg: jsonwebtoken::Algorithm,
    audience: &str,
    issuer: Option<&str>,
) {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    let public = std::fs::read(public_key).unwrap();
    let key = match alg {
        Algorithm::EdDSA => DecodingKey::from_ed_pem(&public),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&public),
        _ => DecodingKey::from_rsa_pem(&public),
    }
    .unwrap();
    let mut validation = Validation::new(alg);
    validation.set_audience(&[audience]);
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
    }
    jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap_or_else(|e| {
        panic!(
            "the token does not verify with {}: {e}",
            public_key.display()
        )
    });
}

// ---------------------------------------------------------------------------
// Graceful shutdown, the admin listener and healthcheck
// ---------------------------------------------------------------------------

/// An upstream that answers one request slowly, so that a test can signal
/// the gateway while that request is in flight.
struct SlowUpstream {
    addr: SocketAddr,
    /// Receives `()` once the gateway's request head has arrived.
    arrived: mpsc::Receiver<()>,
}

impl SlowUpstream {
    /// Accepts one connection (for up to [`LISTEN_TIMEOUT`]), reads its
    /// request head, reports it on `arrived`, then `delay` later answers
    /// `200` with `body` and closes.
    fn start(delay: Duration, body: &'static str) -> SlowUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let (report, arrived) = mpsc::channel();
        std::thread::spawn(move || {
            let deadline = Instant::now() + LISTEN_TIMEOUT;
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            };
            let timeouts = stream.set_nonblocking(false).and_then(|()| {
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                stream.set_write_timeout(Some(Duration::from_secs(5)))
            });
            if timeouts.is_err() {
                return;
            }
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = report.send(());
            std::thread::sleep(delay);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        });
        SlowUpstream { addr, arrived }
    }
}

/// The fixture's config with its `/orders` route public (no policies) and
/// forwarded to `upstream`, and `limits.drain_timeout` set.
fn drain_config(fixture: &Fixture, upstream: SocketAddr, drain_timeout: &str) -> PathBuf {
    let jwt_policy =
        "    policies:\n      - jwt:\n          audience: orders\n          scopes: [read]\n";
    let valid = fixture.valid_yaml();
    assert!(valid.contains(jwt_policy), "{valid}");
    let yaml = valid
        .replace(
            "upstream: http://127.0.0.1:9",
            &format!("upstream: http://{upstream}"),
        )
        .replace(jwt_policy, "    policies: []\n");
    let yaml = format!("{yaml}limits: {{drain_timeout: {drain_timeout}}}\n");
    fixture.write("drain.yaml", &yaml)
}

/// A gateway with one request in flight, held by a [`SlowUpstream`].
struct InFlight {
    server: Server,
    public: SocketAddr,
    admin: SocketAddr,
    /// The client's side of the request: all it read before the gateway
    /// closed the connection (or a read error, after `client_timeout`).
    request: JoinHandle<std::io::Result<Vec<u8>>>,
}

impl InFlight {
    /// Runs `config`, sends `GET /orders/slow` and returns once `upstream`
    /// has received it.
    fn start(config: &Path, upstream: &SlowUpstream, client_timeout: Duration) -> InFlight {
        let mut command = jwtgate();
        command.args(["run", "-c", config.to_str().unwrap()]);
        let mut server = Server::spawn(command);
        let public = server.public_addr();
        let admin = server.admin_addr();
        let request =
            std::thread::spawn(move || http_get_raw(public, "/orders/slow", client_timeout));
        if upstream.arrived.recv_timeout(LISTEN_TIMEOUT).is_err() {
            let finished = request.is_finished().then(|| request.join());
            panic!(
                "the upstream never got the request (client: {finished:?}); stderr so far:\n{}",
                server.seen.join("\n")
            );
        }
        InFlight {
            server,
            public,
            admin,
            request,
        }
    }

    /// The client's request, which must have failed: the connection closed
    /// without a complete response (and not a client-side timeout).
    fn assert_request_cut_off(self) {
        match self.request.join().expect("client thread") {
            Ok(raw) => assert!(
                parse_response(&raw).is_none(),
                "expected no complete response, got {:?}",
                String::from_utf8_lossy(&raw)
            ),
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the gateway left the connection open until the client gave up: {e}"
            ),
        }
    }
}

/// Polls `addr` until it refuses a new connection; panics if it still
/// accepts them after `timeout`.
fn wait_until_refused(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            // A handshake that completed in the backlog of a listener that
            // then closed (reset), or one caught while it closed (no answer
            // in time): the listener is going away, not yet gone.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("connecting to {addr}: {e}; expected `connection refused`"),
            Ok(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts connections {timeout:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The status and body of `GET path` at `addr`.
fn status_and_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = http_get(addr, path).unwrap_or_else(|| panic!("no response to {path}"));
    (
        response.status,
        String::from_utf8_lossy(&response.body).into_owned(),
    )
}

fn healthcheck(admin: &str) -> Output {
    run_args(&["healthcheck", "--admin", admin])
}

/// The issue's "Done when": on SIGTERM the public listener stops accepting
/// at once, the admin listener keeps serving (`/readyz` 503), the request in
/// flight completes, and the process exits 0 as soon as it has.
#[test]
fn run_drains_the_request_in_flight_on_sigterm_then_exits_0() {
    // Long enough to probe the draining gateway before the upstream answers.
    const UPSTREAM_DELAY: Duration = Duration::from_secs(2);
    const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
    let fixture = Fixture::new();
    let upstream = SlowUpstream::start(UPSTREAM_DELAY, "slow but complete");
    let config = drain_config(&fixture, upstream.addr, "5s");
    let mut gateway = InFlight::start(&config, &upstream, Duration::from_secs(10));

    let signalled = Instant::now();
    gateway.server.signal("TERM");
    wait_until_refused(gateway.public, Duration::from_secs(5));
    assert_eq!(
        status_and_body(gateway.admin, "/readyz"),
        (503, r#"{"status":"draining"}"#.to_owned())
    );
    assert_eq!(
        status_and_body(gateway.admin, "/healthz"),
        (200, r#"{"status":"alive"}"#.to_owned())
    );
    assert!(
        !gateway.request.is_finished(),
        "the probes above must run while the request is in flight; \
         they took {:?} of the upstream's {UPSTREAM_DELAY:?}",
        signalled.elapsed()
    );

    let raw = gateway
        .request
        .join()
        .expect("client thread")
        .expect("the request in flight completes");
    let response = parse_response(&raw)
        .unwrap_or_else(|| panic!("a complete response: {:?}", String::from_utf8_lossy(&raw)));
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, b"slow but complete", "{response:?}");

    let code = gateway
        .server
        .wait_for_exit(DRAIN_TIMEOUT.saturating_sub(signalled.elapsed()));
    assert_eq!(code, Some(0));
    gateway.server.wait_for_line(Duration::from_secs(5), |l| {
        l.contains("INFO") && l.contains("all connections drained")
    });
}

/// A request still in flight when `limits.drain_timeout` runs out is cut
/// off; the gateway still exits 0 (the shutdown it was asked for happened).
#[test]
fn run_cuts_off_requests_still_in_flight_at_the_drain_timeout_and_exits_0() {
    let fixture = Fixture::new();
    let upstream = SlowUpstream::start(Duration::from_secs(10), "too late");
    let config = drain_config(&fixture, upstream.addr, "1s");
    let mut gateway = InFlight::start(&config, &upstream, Duration::from_secs(8));

    let signalled = Instant::now();
    gateway.server.signal("TERM");
    let code = gateway.server.wait_for_exit(Duration::from_secs(5));
    let took = signalled.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_secs(1),
        "exited {took:?} after SIGTERM, before the 1 s drain timeout"
    );
    let warning = gateway
        .server
        .wait_for_line(Duration::from_secs(5), |l| l.contains("drain timeout"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        !gateway
            .server
            .seen
            .iter()
            .any(|l| l.contains("all connections drained")),
        "{:?}",
        gateway.server.seen
    );
    gateway.assert_request_cut_off();
}

/// While draining, `healthcheck` fails (`/readyz` is 503); a second SIGTERM
/// or SIGINT ends the drain at once with status 1.
#[test]
fn run_exits_1_at_once_on_a_second_signal_during_the_drain() {
    let fixture = Fixture::new();
    for second in ["TERM", "INT"] {
        let upstream = SlowUpstream::start(Duration::from_secs(10), "too late");
        let config = drain_config(&fixture, upstream.addr, "30s");
        let mut gateway = InFlight::start(&config, &upstream, Duration::from_secs(8));

        gateway.server.signal("TERM");
        gateway
            .server
            .wait_for_line(LISTEN_TIMEOUT, |l| l.contains("shutting down"));
        // Once the public listener is closed, `/readyz` answers 503.
        wait_until_refused(gateway.public, Duration::from_secs(5));
        let admin = gateway.admin.to_string();
        let line = assert_fails_with_context(
            &healthcheck(&admin),
            &format!("jwtgate: {admin}: "),
            &format!("SIGTERM then SIG{second}: "),
        );
        assert!(line.contains("503"), "{line}");

        gateway.server.signal(second);
        // Far less than the 30 s drain timeout.
        let code = gateway.server.wait_for_exit(Duration::from_secs(5));
        assert_eq!(code, Some(1), "second signal SIG{second}");
        let warning = gateway
            .server
            .wait_for_line(Duration::from_secs(5), |l| l.contains("second signal"));
        assert!(warning.contains("WARN"), "{warning}");
        gateway.assert_request_cut_off();
    }
}

#[test]
fn healthcheck_exits_0_when_the_admin_listener_is_ready() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let mut server = Server::run(&config);
    let admin = server.admin_addr();
    let public = server.public_addr();

    // An unspecified address (as in `admin: 0.0.0.0:9901`) is reached on
    // loopback.
    for target in [admin.to_string(), format!("0.0.0.0:{}", admin.port())] {
        let output = healthcheck(&target);
        assert_eq!(output.code, Some(0), "--admin {target}: {output:#?}");
        assert_eq!(output.stdout, "", "--admin {target}: {output:#?}");
        assert_eq!(output.stderr, "", "--admin {target}: {output:#?}");
    }

    // The public listener has no `/readyz`: answering is not enough.
    let line = assert_fails_with(
        &healthcheck(&public.to_string()),
        &format!("jwtgate: {public}: "),
    );
    assert!(line.contains("404"), "{line}");
}

#[test]
fn healthcheck_names_an_admin_address_it_cannot_reach_or_parse() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let output = healthcheck(&closed.to_string());
    assert_fails_with(&output, &format!("jwtgate: {closed}: "));

    let output = healthcheck("not-an-address");
    let line = assert_fails_with(&output, "jwtgate: ");
    assert!(line.contains("not-an-address"), "{line}");
}

/// SPEC §3 Admin listener: Prometheus text with the standard `process_*`
/// metrics and the reload counters exported from start; none of the admin
/// endpoints is served on the public listener.
#[test]
fn admin_listener_serves_metrics_and_probes_that_the_public_listener_does_not() {
    let fixture = Fixture::new();
    let config = fixture.valid_config();
    let started = now();
    let mut server = Server::run(&config);
    let public = server.public_addr();
    let admin = server.admin_addr();

    let response = http_get(admin, "/metrics").expect("a /metrics response");
    assert_eq!(response.status, 200, "{response:?}");
    let content_type = response
        .head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .expect("a Content-Type");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = String::from_utf8(response.body).expect("UTF-8 metrics");
    let sample = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} sample in:\n{text}"));
        line[name.len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    assert!(sample("process_resident_memory_bytes") > 0.0, "{text}");
    assert!(sample("process_cpu_seconds_total") >= 0.0, "{text}");
    let start_time = sample("process_start_time_seconds");
    assert!(
        (started as f64 - 5.0..=now() as f64 + 5.0).contains(&start_time),
        "process_start_time_seconds {start_time} is not the time the process started ({started})"
    );
    assert!(
        text.lines()
            .any(|l| l == r#"jwtgate_config_reloads_total{result="success"} 0"#),
        "{text}"
    );

    assert_eq!(
        status_and_body(admin, "/readyz"),
        (200, r#"{"status":"ready"}"#.to_owned())
    );
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            status_and_body(public, path),
            (
                404,
                r#"{"error":"not_found","error_description":"no route matches this request"}"#
                    .to_owned()
            ),
            "public {path}"
        );
    }
}
