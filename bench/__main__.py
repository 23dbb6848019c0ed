from framebench.driver.cli import main

main()
