"""Models: resolve a reference to a local directory (`resolve`), load it for training (`load`),
and what vision-language models need (`vision`)."""
