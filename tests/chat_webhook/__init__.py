"""The README's chat webhook example as an installed app, so the tests run it for real."""
