//! The WebSocket protocol: one connection's loop (`conn`) and its frames
//! (`frames`). The HTTP transport validates a stream request and upgrades it
//! (`http::streams`); from then on the socket is served here, through the
//! service layer only. `ws` never imports `http`.

pub mod conn;
pub mod frames;
