"""The aiohttp recommendation service."""
