"""The command API (kubevirt.cmd.v1.Cmd): the gRPC server on the UNIX socket and one
module per rpc family."""
