//! `host:port` of a PostgreSQL instance: the form of `RouteEntry.endpoint`,
//! `ObservedReplica.endpoint` and the split/merge orders' endpoints. One parser for all.

use std::fmt;

/// `host:port` of a PostgreSQL instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// An endpoint that is not `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {text:?} is not host:port (a host name or address, a colon, a TCP port)")]
pub struct EndpointError {
    /// What was given.
    pub text: String,
}

impl Endpoint {
    /// Parses `host:port`; the port is what follows the last colon.
    pub fn parse(text: &str) -> Result<Endpoint, EndpointError> {
        let bad = || EndpointError {
            text: text.to_owned(),
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_split_at_the_last_colon() {
        let endpoint = Endpoint::parse("db-1.example:5432").unwrap();
        assert_eq!(endpoint.host, "db-1.example");
        assert_eq!(endpoint.port, 5432);
        assert_eq!(endpoint.to_string(), "db-1.example:5432");
        for bad in ["", "host", ":5432", "host:", "host:99999", "host:port"] {
            let error = Endpoint::parse(bad).unwrap_err();
            assert!(
                error.to_string().contains("not host:port"),
                "{bad}: {error}"
            );
        }
    }
}
