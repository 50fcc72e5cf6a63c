use std::str::FromStr;

/// The connector's `Importance`: sets the `Importance`, `X-Priority` and
/// `X-MSMail-Priority` headers.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub enum Importance {
    High,
    #[default]
    Normal,
    Low,
}

impl Importance {
    /// Value of the RFC 2156 `Importance` header.
    pub fn importance_header(self) -> &'static str {
        match self {
            Importance::High => "high",
            Importance::Normal => "normal",
            Importance::Low => "low",
        }
    }

    /// Value of the `X-Priority` header as Outlook and Thunderbird write it.
    pub fn x_priority_header(self) -> &'static str {
        match self {
            Importance::High => "1 (Highest)",
            Importance::Normal => "3 (Normal)",
            Importance::Low => "5 (Lowest)",
        }
    }

    /// Value of the `X-MSMail-Priority` header.
    pub fn ms_mail_priority_header(self) -> &'static str {
        match self {
            Importance::High => "High",
            Importance::Normal => "Normal",
            Importance::Low => "Low",
        }
    }
}

impl FromStr for Importance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(Importance::High),
            "normal" | "" => Ok(Importance::Normal),
            "low" => Ok(Importance::Low),
            _ => Err(format!("must be High, Normal or Low, not {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn importance_parses_case_insensitively() {
        assert_eq!("HIGH".parse::<Importance>(), Ok(Importance::High));
        assert_eq!("low".parse::<Importance>(), Ok(Importance::Low));
        assert_eq!("Normal".parse::<Importance>(), Ok(Importance::Normal));
        assert!("urgent".parse::<Importance>().is_err());
    }
}
