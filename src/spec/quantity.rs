//! Kubernetes-style memory quantities (`256Mi`, `1G`, `1048576`).
//!
//! Pure parsing; no I/O.

/// Parses a memory quantity into bytes. Binary suffixes `Ki Mi Gi Ti`,
/// decimal suffixes `K M G T` (also lower-case `k`), or plain bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use Ki, Mi, Gi, K, M, G or plain bytes)"
            ));
        }
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a memory quantity"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_memory;

    #[test]
    fn binary_and_decimal_suffixes_are_understood() {
        assert_eq!(parse_memory("256Mi"), Ok(256 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("64Ki"), Ok(64 << 10));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("1.5M"), Ok(1_500_000));
        assert_eq!(parse_memory("4096"), Ok(4096));
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(parse_memory("12XB").is_err());
        assert!(parse_memory("Mi").is_err());
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("-5Mi").is_err());
    }
}
