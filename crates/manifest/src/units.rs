//! Parsing of the human-friendly quantities the manifest accepts: sizes, durations, bit rates,
//! file modes and CPU lists. Each function returns a [`Problem`] that says what was expected.

use std::time::Duration;

use crate::error::Problem;

/// Parses a size: a byte count or a number with a binary suffix `K`, `M`, `G`, `T` (optionally
/// followed by `iB` or `B`, any case): `"16M"` is 16 MiB.
pub fn parse_size(text: &str) -> Result<u64, Problem> {
    let bad = || {
        Problem::invalid(
            format!("expected a size like \"128M\", got {text:?}"),
            "write a whole number of bytes or a number with K, M, G or T (binary: 1K = 1024), e.g. \"128M\"",
        )
    };
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let number: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let suffix = t[digits_end..].to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    number.checked_mul(1u64 << shift).filter(|v| *v <= i64::MAX as u64).ok_or_else(|| {
        Problem::invalid(format!("size {text:?} is too large"), "use a size below 8 EiB")
    })
}

/// Renders a size the way [`parse_size`] reads it, with the largest exact binary suffix.
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes % (1u64 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Parses a duration: `"500ms"`, `"10s"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, Problem> {
    let bad = || {
        Problem::invalid(
            format!("expected a duration like \"10s\", got {text:?}"),
            "write a whole number followed by ms, s, m or h, e.g. \"10s\" or \"500ms\"",
        )
    };
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let number: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let millis_per = match &t[digits_end..] {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    number.checked_mul(millis_per).map(Duration::from_millis).ok_or_else(bad)
}

/// Renders a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms != 0 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a bit rate in tc(8) notation: `"10mbit"`, `"512kbit"`, `"1gbit"`, `"800bit"`
/// (decimal multiples). Byte rates (`mbps`) are refused because tc reads them as *bytes*.
pub fn parse_rate(text: &str) -> Result<u64, Problem> {
    let bad = || {
        Problem::invalid(
            format!("expected a bit rate like \"10mbit\", got {text:?}"),
            "write a whole number followed by bit, kbit, mbit or gbit (decimal), e.g. \"10mbit\"",
        )
    };
    let t = text.trim().to_ascii_lowercase();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let number: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let unit = &t[digits_end..];
    let mult: u64 = match unit {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        "tbit" => 1_000_000_000_000,
        "bps" | "kbps" | "mbps" | "gbps" | "tbps" => {
            return Err(Problem::invalid(
                format!("ambiguous rate {text:?}: tc reads `{unit}` as bytes per second"),
                format!(
                    "write bits per second with `{}`, e.g. \"{number}{}\"",
                    unit.replace("bps", "bit"),
                    unit.replace("bps", "bit")
                ),
            ))
        }
        _ => return Err(bad()),
    };
    let bps = number.checked_mul(mult).ok_or_else(bad)?;
    if bps < 8_000 {
        return Err(Problem::invalid(
            format!("rate {text:?} is below 8kbit, which would stall the network"),
            "use at least \"8kbit\", or remove `bandwidth` for no shaping",
        ));
    }
    Ok(bps)
}

/// Renders a bit rate the way [`parse_rate`] reads it.
pub fn format_rate(bps: u64) -> String {
    for (mult, unit) in
        [(1_000_000_000_000, "tbit"), (1_000_000_000, "gbit"), (1_000_000, "mbit"), (1_000, "kbit")]
    {
        if bps != 0 && bps % mult == 0 {
            return format!("{}{unit}", bps / mult);
        }
    }
    format!("{bps}bit")
}

/// Parses a file mode given as an octal string (`"1777"`, `"0755"`, `"0o700"`).
pub fn parse_mode_str(text: &str) -> Result<u32, Problem> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8).map_err(|_| {
        Problem::invalid(
            format!("expected an octal mode like \"1777\", got {text:?}"),
            "write the mode as octal digits in a string (\"0755\") or as a TOML octal integer (0o755)",
        )
    })?;
    check_mode(mode)
}

/// Checks that a mode has only permission, sticky, setgid and setuid bits.
pub fn check_mode(mode: u32) -> Result<u32, Problem> {
    if mode > 0o7777 {
        return Err(Problem::invalid(
            format!("mode 0o{mode:o} has bits outside 0o7777"),
            "use a mode between 0o0 and 0o7777, e.g. 0o1777",
        ));
    }
    if mode & 0o6000 != 0 {
        return Err(Problem::refused(
            format!("mode 0o{mode:o} sets setuid/setgid bits on a mount root"),
            "drop the 4000/2000 bits, e.g. 0o1777 or 0o0755",
        ));
    }
    Ok(mode)
}

/// Highest CPU number accepted in a cpuset (the kernel's NR_CPUS maximum is 8192).
const MAX_CPU_INDEX: u32 = 8191;

/// Validates a cpuset list (`"0-3,5"`) and returns it normalized (no spaces).
pub fn parse_cpuset(text: &str) -> Result<String, Problem> {
    let bad = |why: String| {
        Problem::invalid(
            format!("expected a CPU list like \"0-1,3\", got {text:?}: {why}"),
            "write comma-separated CPU numbers or ascending ranges, e.g. \"0-1,3\"",
        )
    };
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Err(bad("the list is empty".into()));
    }
    for part in compact.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo, hi),
            None => (part, part),
        };
        let lo: u32 =
            lo.parse().map_err(|_| bad(format!("`{part}` is not a CPU number or range")))?;
        let hi: u32 =
            hi.parse().map_err(|_| bad(format!("`{part}` is not a CPU number or range")))?;
        if lo > hi {
            return Err(bad(format!("range `{part}` is descending")));
        }
        if hi > MAX_CPU_INDEX {
            return Err(bad(format!("CPU {hi} is above {MAX_CPU_INDEX}")));
        }
    }
    Ok(compact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_suffixes() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("512K").unwrap(), 512 * 1024);
        assert_eq!(parse_size("16M").unwrap(), 16 << 20);
        assert_eq!(parse_size("16m").unwrap(), 16 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        for bad in ["lots", "", "M", "1.5G", "-1", "12X", "1 G B"] {
            let p = parse_size(bad).unwrap_err();
            assert!(p.message.contains("expected a size like"), "{bad}: {p:?}");
        }
        assert!(parse_size("99999999999T").unwrap_err().message.contains("too large"));
    }

    #[test]
    fn sizes_format_back_to_what_parses() {
        for v in [0, 1, 1023, 1024, 16 << 20, 3 << 30, (1 << 20) + 1] {
            assert_eq!(parse_size(&format_size(v)).unwrap(), v);
        }
        assert_eq!(format_size(16 << 20), "16M");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
    }

    #[test]
    fn rates_are_decimal_bits() {
        assert_eq!(parse_rate("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate("512kbit").unwrap(), 512_000);
        assert_eq!(parse_rate("1Gbit").unwrap(), 1_000_000_000);
        let p = parse_rate("10mbps").unwrap_err();
        assert!(p.message.contains("bytes per second"), "{p:?}");
        assert!(p.fix.contains("\"10mbit\""), "{p:?}");
        assert!(parse_rate("100bit").unwrap_err().message.contains("below 8kbit"));
        assert!(parse_rate("fast").is_err());
        for v in [8_000, 10_000_000, 1_500_000, 123_456] {
            assert_eq!(parse_rate(&format_rate(v)).unwrap(), v);
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode_str("1777").unwrap(), 0o1777);
        assert_eq!(parse_mode_str("0o700").unwrap(), 0o700);
        assert!(parse_mode_str("999").is_err());
        assert!(parse_mode_str("17777").unwrap_err().message.contains("outside"));
        assert!(parse_mode_str("4755").unwrap_err().message.contains("setuid"));
    }

    #[test]
    fn cpusets() {
        assert_eq!(parse_cpuset("0-1, 3").unwrap(), "0-1,3");
        assert!(parse_cpuset("3-1").unwrap_err().message.contains("descending"));
        assert!(parse_cpuset("a").is_err());
        assert!(parse_cpuset("").is_err());
        assert!(parse_cpuset("9000").unwrap_err().message.contains("above"));
    }
}
