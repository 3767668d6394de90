//! The config loader (YAML → validated snapshot) on any text: never a panic.
//! Inputs that name files or ask for generated keys are parsed but not
//! built, so the fuzzer neither reads the machine's files nor spends its
//! time generating RSA keys.
#![no_main]

use jwtgate::config::ConfigSource;
use jwtgate::runtime::GeneratedKeys;
use jwtgate::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = ConfigSource {
        path: None,
        text: text.to_owned(),
    };
    let Ok(config) = source.parse() else {
        return;
    };
    if !config.named_files().is_empty() || config.keys.iter().any(|k| k.generate) {
        return;
    }
    match Snapshot::build(&source, &GeneratedKeys::default()) {
        Ok(snapshot) => {
            // A valid config's routes are all in normal form.
            for route in &snapshot.routes {
                assert!(jwtgate::router::check_normal_form(&route.matcher.path_prefix).is_ok());
            }
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
