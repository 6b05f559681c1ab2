def main() -> int:
    raise SystemExit("cli not ready")
