from s3pipefs.cli import run

run()
