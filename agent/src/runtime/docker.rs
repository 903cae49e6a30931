//! `DockerRuntime`: the `ContainerRuntime` over a Docker Engine, through bollard.
