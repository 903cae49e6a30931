//! The clonepool coordinator: the HTTPS API users call, the durable job engine, the agent
//! registry and router, the cold provisioner, the TTL reaper and the edge proxy.
