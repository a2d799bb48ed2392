//! `-o json`: a reply in the proto3 canonical JSON mapping, as grpcurl
//! prints it (lowerCamelCase names, enums by name, 64-bit integers as
//! strings, Timestamps as RFC 3339 in UTC, fields at their default
//! omitted). prost-reflect does the mapping from the launcher's own
//! descriptor set; nothing here is written out by hand. Object keys come
//! out sorted, so that maps print the same every time.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::Value;

use crate::proto;

/// A generated message and its full proto name.
pub trait Wire: Message {
    /// `prism.launcher.<Name>`.
    const NAME: &'static str;
}

macro_rules! wire {
    ($($t:ident),* $(,)?) => {
        $(impl Wire for proto::$t {
            const NAME: &'static str = concat!("prism.launcher.", stringify!($t));
        })*
        /// Every message `ctl` prints (for the tests).
        #[cfg(test)]
        pub(super) const ALL: &[&str] = &[$(concat!("prism.launcher.", stringify!($t))),*];
    };
}

wire!(
    LaunchResponse,
    ListPatternsResponse,
    PatternInfo,
    TerminateResponse,
    HealthResponse,
    ListSourcesResponse,
    WatchEvent,
    LogLine,
    DescribeResponse,
    RestartResponse,
    SignalResponse,
);

/// Why a reply cannot be printed as JSON (a build whose descriptor set
/// does not match its generated code: a bug, not an input).
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The embedded descriptor set does not load.
    #[error("the embedded descriptor set: {0}")]
    Pool(String),
    /// The descriptor set lacks the message.
    #[error("no message {0} in the descriptor set")]
    Unknown(&'static str),
    /// The message's bytes do not decode against its descriptor.
    #[error("{name}: {reason}")]
    Decode {
        /// The message.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()));

/// `msg` in the canonical JSON mapping.
pub fn to_value<M: Wire>(msg: &M) -> Result<Value, JsonError> {
    let pool = POOL.as_ref().map_err(|e| JsonError::Pool(e.clone()))?;
    let desc = pool
        .get_message_by_name(M::NAME)
        .ok_or(JsonError::Unknown(M::NAME))?;
    let decode = |reason: String| JsonError::Decode {
        name: M::NAME,
        reason,
    };
    let dynamic = DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| decode(e.to_string()))?;
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .map_err(|e| decode(e.to_string()))
}

/// One reply, indented as grpcurl prints it.
pub fn pretty<M: Wire>(msg: &M) -> Result<String, JsonError> {
    let v = to_value(msg)?;
    Ok(serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string()))
}

/// One reply on one line (a stream's item).
pub fn line<M: Wire>(msg: &M) -> Result<String, JsonError> {
    Ok(to_value(msg)?.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;
    use crate::proto::{IsolationLevel, PatternInfo, ProcessState};

    #[test]
    fn every_printed_message_is_in_the_descriptor_set() {
        let pool = POOL.as_ref().expect("the pool loads");
        for name in ALL {
            assert!(pool.get_message_by_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn the_mapping_is_protos_canonical_json() {
        let info = PatternInfo {
            pattern_name: "p".into(),
            process_id: "ns:t:p".into(),
            state: ProcessState::StateRunning.into(),
            uptime_seconds: 42,
            isolation: IsolationLevel::IsolationNamespace.into(),
            pid: 7,
            ..Default::default()
        };
        assert_eq!(
            to_value(&info).expect("maps"),
            json!({
                "patternName": "p",
                "processId": "ns:t:p",
                "state": "STATE_RUNNING",
                "uptimeSeconds": "42",
                "isolation": "ISOLATION_NAMESPACE",
                "pid": 7,
            }),
            "camelCase names, enum names, int64 as strings, defaults left out"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_in_utc_and_maps_are_objects() {
        let ev = proto::WatchEvent {
            revision: 9,
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 250_000_000,
            }),
            reason: "Spawned".into(),
            ..Default::default()
        };
        assert_eq!(
            to_value(&ev).expect("maps"),
            json!({"revision": "9", "time": "2023-11-14T22:13:20.250Z", "reason": "Spawned"})
        );
        let d = proto::DescribeResponse {
            config: HashMap::from([("B".into(), "2".into()), ("A".into(), "1".into())]),
            ..Default::default()
        };
        let text = pretty(&d).expect("maps");
        assert_eq!(
            text,
            "{\n  \"config\": {\n    \"A\": \"1\",\n    \"B\": \"2\"\n  }\n}"
        );
        assert_eq!(
            line(&proto::LogLine::default()).expect("maps"),
            "{}",
            "an empty message is an empty object"
        );
    }
}
