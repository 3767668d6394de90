//! Minimal PEM (RFC 7468) reading and writing: one labelled base64 block.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// One decoded PEM block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemBlock {
    pub label: String,
    pub der: Vec<u8>,
}

/// Decodes the first PEM block in `text`, ignoring explanatory text around it.
pub fn decode(text: &str) -> Result<PemBlock, String> {
    let mut lines = text.lines().map(str::trim);
    let label = loop {
        let line = lines
            .next()
            .ok_or("no PEM block (-----BEGIN …----- line) found")?;
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            break rest
                .strip_suffix("-----")
                .ok_or("malformed PEM BEGIN line")?
                .to_owned();
        }
    };
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == end {
            let der = STANDARD
                .decode(body.as_bytes())
                .map_err(|e| format!("PEM block `{label}` is not valid base64: {e}"))?;
            return Ok(PemBlock { label, der });
        }
        if line.contains(':') {
            return Err(format!(
                "PEM block `{label}` has headers (encrypted keys are not supported)"
            ));
        }
        body.push_str(line);
    }
    Err(format!("PEM block `{label}` has no END line"))
}

/// Encodes `der` as a PEM block with 64-character lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let der: Vec<u8> = (0..=255u8).collect();
        let text = format!("comment\n{}", encode("PUBLIC KEY", &der));
        assert_eq!(
            decode(&text),
            Ok(PemBlock {
                label: "PUBLIC KEY".into(),
                der
            })
        );
        assert!(decode("hello").unwrap_err().contains("no PEM block"));
        assert!(decode("-----BEGIN X-----\nAAAA\n")
            .unwrap_err()
            .contains("no END"));
        assert!(decode("-----BEGIN X-----\n!!!!\n-----END X-----\n")
            .unwrap_err()
            .contains("base64"));
    }
}
