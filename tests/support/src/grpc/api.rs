//! A typed tonic client for the tests that sample faster than a JSON
//! round trip allows (a rolling restart watched every few milliseconds)
//! and for the benches: wire types in, wire types out, blocking calls.

use prism_launcher::proto;

/// `PatternLauncherClient` on a runtime of its own, with blocking calls.
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: proto::pattern_launcher_client::PatternLauncherClient<tonic::transport::Channel>,
}

impl Api {
    pub fn connect(port: u16) -> Api {
        Api::try_connect(port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects once; `Err` when nothing answers on the port (yet).
    pub fn try_connect(port: u16) -> Result<Api, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let client = rt
            .block_on(
                proto::pattern_launcher_client::PatternLauncherClient::connect(format!(
                    "http://127.0.0.1:{port}"
                )),
            )
            .map_err(|e| format!("cannot connect a gRPC client to 127.0.0.1:{port}: {e}"))?;
        Ok(Api { rt, client })
    }

    /// ListPatterns without a filter.
    pub fn list(&mut self) -> Vec<proto::PatternInfo> {
        let req = proto::ListPatternsRequest::default();
        self.rt
            .block_on(self.client.list_patterns(req))
            .unwrap_or_else(|e| panic!("ListPatterns failed: {e}"))
            .into_inner()
            .patterns
    }

    /// GetProcessStatus (None when not found).
    pub fn status(&mut self, process_id: &str) -> Option<proto::PatternInfo> {
        let req = proto::GetProcessStatusRequest {
            process_id: process_id.to_string(),
        };
        let reply = self
            .rt
            .block_on(self.client.get_process_status(req))
            .unwrap_or_else(|e| panic!("GetProcessStatus {process_id} failed: {e}"))
            .into_inner();
        if reply.not_found { None } else { reply.process }
    }

    /// SignalPattern.
    pub fn signal(
        &mut self,
        process_id: &str,
        signal: &str,
    ) -> Result<proto::SignalResponse, tonic::Status> {
        let req = proto::SignalRequest {
            process_id: process_id.to_string(),
            signal: signal.to_string(),
        };
        self.rt
            .block_on(self.client.signal_pattern(req))
            .map(tonic::Response::into_inner)
    }

    /// RestartPattern.
    pub fn restart(
        &mut self,
        req: proto::RestartRequest,
    ) -> Result<proto::RestartResponse, tonic::Status> {
        self.rt
            .block_on(self.client.restart_pattern(req))
            .map(tonic::Response::into_inner)
    }

    /// Describe.
    pub fn describe(&mut self, process_id: &str) -> Result<proto::DescribeResponse, tonic::Status> {
        let req = proto::DescribeRequest {
            process_id: process_id.to_string(),
        };
        self.rt
            .block_on(self.client.describe(req))
            .map(tonic::Response::into_inner)
    }
}

/// A wire PatternInfo that is RUNNING and healthy.
pub fn info_running(p: &proto::PatternInfo) -> bool {
    p.state == proto::ProcessState::StateRunning as i32 && p.healthy
}
