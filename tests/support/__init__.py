"""Test support: servers, proxies and builders the tests share (not tests themselves)."""
