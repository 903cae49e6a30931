//! `FakeRuntime`: an in-memory, recording `ContainerRuntime` for unit tests of the layers above.
